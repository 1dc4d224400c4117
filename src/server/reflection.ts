import { create, toBinary } from "@bufbuild/protobuf";
import type {
  DescEnum,
  DescExtension,
  DescFile,
  DescMessage,
  DescService,
  MessageInitShape,
} from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import type { ConnectRouter, ServiceImpl } from "@connectrpc/connect";
import {
  ServerReflection,
  ServerReflectionResponseSchema,
  type ServerReflectionRequest,
} from "../../gen/grpc/reflection/v1/reflection_pb.js";

type ResponseInit = MessageInitShape<typeof ServerReflectionResponseSchema>;
type Answer = ResponseInit["messageResponse"];

/**
 * Everything reflection can be asked about, looked up once at construction:
 * the descriptors are fixed for the life of the process.
 */
interface ReflectionIndex {
  readonly serviceNames: readonly string[];
  readonly fileByName: ReadonlyMap<string, DescFile>;
  /** Every fully-qualified name declared in a file, to its file. */
  readonly fileBySymbol: ReadonlyMap<string, DescFile>;
  /** Extendee type name, to extension number, to the declaring file. */
  readonly extensions: ReadonlyMap<string, ReadonlyMap<number, DescFile>>;
}

/**
 * Creates the `grpc.reflection.v1.ServerReflection` implementation that
 * describes `services`: their files and every file those import, so that
 * clients such as `buf curl` or grpcurl can call the services without a
 * local copy of the schema.
 *
 * Each file answer carries the requested file followed by all of its
 * transitive dependencies, every time; the files are small, and a client
 * never has to ask twice.
 */
export function createReflectionService(
  services: readonly DescService[],
): ServiceImpl<typeof ServerReflection> {
  const index = buildIndex(services);
  const encoded = new Map<DescFile, Uint8Array>();
  const encode = (file: DescFile): Uint8Array => {
    let bytes = encoded.get(file);
    if (bytes === undefined) {
      bytes = toBinary(FileDescriptorProtoSchema, file.proto);
      encoded.set(file, bytes);
    }
    return bytes;
  };
  return {
    async *serverReflectionInfo(requests) {
      for await (const request of requests) {
        yield create(ServerReflectionResponseSchema, {
          validHost: request.host,
          originalRequest: request,
          messageResponse: answer(index, encode, request),
        });
      }
    },
  };
}

/**
 * Serves gRPC server reflection (v1) for `services` on `router`. The
 * reflection service lists itself as well, as grpc-go's does.
 *
 * Only `grpc.reflection.v1` is served; clients that try it first and fall
 * back to `v1alpha` (buf curl, grpcurl) need nothing more.
 */
export function registerReflection(
  router: ConnectRouter,
  services: readonly DescService[],
): void {
  const all = services.some((s) => s.typeName === ServerReflection.typeName)
    ? services
    : [...services, ServerReflection];
  router.service(ServerReflection, createReflectionService(all));
}

function answer(
  index: ReflectionIndex,
  encode: (file: DescFile) => Uint8Array,
  request: ServerReflectionRequest,
): Answer {
  const files = (file: DescFile | undefined, what: string): Answer =>
    file === undefined
      ? notFound(`${what} not found`)
      : {
          case: "fileDescriptorResponse",
          value: { fileDescriptorProto: withDependencies(file).map(encode) },
        };
  const req = request.messageRequest;
  switch (req.case) {
    case "listServices":
      return {
        case: "listServicesResponse",
        value: { service: index.serviceNames.map((name) => ({ name })) },
      };
    case "fileByFilename":
      return files(index.fileByName.get(req.value), `file ${req.value}`);
    case "fileContainingSymbol":
      return files(index.fileBySymbol.get(req.value), `symbol ${req.value}`);
    case "fileContainingExtension": {
      const { containingType, extensionNumber } = req.value;
      return files(
        index.extensions.get(containingType)?.get(extensionNumber),
        `extension ${extensionNumber} of ${containingType}`,
      );
    }
    case "allExtensionNumbersOfType": {
      // An unknown type is NOT_FOUND; a known type without extensions is an
      // empty list.
      if (!index.fileBySymbol.has(req.value)) {
        return notFound(`type ${req.value} not found`);
      }
      const numbers = [...(index.extensions.get(req.value)?.keys() ?? [])];
      return {
        case: "allExtensionNumbersResponse",
        value: { baseTypeName: req.value, extensionNumber: numbers },
      };
    }
    case undefined:
      return error(Code.InvalidArgument, "empty reflection request");
  }
}

function notFound(message: string): Answer {
  return error(Code.NotFound, message);
}

function error(code: Code, message: string): Answer {
  // Connect's Code numbers are gRPC's status codes.
  return {
    case: "errorResponse",
    value: { errorCode: code, errorMessage: message },
  };
}

/** The file first, then every file it imports, directly or not, once. */
function withDependencies(file: DescFile): DescFile[] {
  const seen = new Set<DescFile>();
  const visit = (f: DescFile): void => {
    if (seen.has(f)) return;
    seen.add(f);
    f.dependencies.forEach(visit);
  };
  visit(file);
  return [...seen];
}

function buildIndex(services: readonly DescService[]): ReflectionIndex {
  const fileByName = new Map<string, DescFile>();
  const fileBySymbol = new Map<string, DescFile>();
  const extensions = new Map<string, Map<number, DescFile>>();

  const addExtension = (ext: DescExtension): void => {
    fileBySymbol.set(ext.typeName, ext.file);
    let byNumber = extensions.get(ext.extendee.typeName);
    if (byNumber === undefined) {
      byNumber = new Map();
      extensions.set(ext.extendee.typeName, byNumber);
    }
    byNumber.set(ext.number, ext.file);
  };
  const addEnum = (desc: DescEnum): void => {
    fileBySymbol.set(desc.typeName, desc.file);
    // Enum values are scoped as siblings of their enum, as in C++.
    const scope = desc.typeName.slice(0, desc.typeName.lastIndexOf(".") + 1);
    for (const value of desc.values) {
      fileBySymbol.set(scope + value.name, desc.file);
    }
  };
  const addMessage = (desc: DescMessage): void => {
    fileBySymbol.set(desc.typeName, desc.file);
    for (const member of [...desc.fields, ...desc.oneofs]) {
      fileBySymbol.set(`${desc.typeName}.${member.name}`, desc.file);
    }
    desc.nestedMessages.forEach(addMessage);
    desc.nestedEnums.forEach(addEnum);
    desc.nestedExtensions.forEach(addExtension);
  };
  const addFile = (file: DescFile): void => {
    // DescFile.name has no ".proto"; clients ask for the path as imported.
    const name = file.proto.name;
    if (fileByName.has(name)) return;
    fileByName.set(name, file);
    file.messages.forEach(addMessage);
    file.enums.forEach(addEnum);
    file.extensions.forEach(addExtension);
    for (const service of file.services) {
      fileBySymbol.set(service.typeName, file);
      for (const method of service.methods) {
        fileBySymbol.set(`${service.typeName}.${method.name}`, file);
      }
    }
    file.dependencies.forEach(addFile);
  };
  services.forEach((s) => addFile(s.file));

  const serviceNames = [...new Set(services.map((s) => s.typeName))];
  return { serviceNames, fileByName, fileBySymbol, extensions };
}
