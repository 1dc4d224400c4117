import {
  Code,
  ConnectError,
  type Interceptor,
  type StreamRequest,
  type StreamResponse,
  type UnaryRequest,
  type UnaryResponse,
} from "@connectrpc/connect";

type Next = Parameters<Interceptor>[0];

/**
 * How a call ended: undefined for success, else the error the client is
 * sent, and the response headers when the handler got as far as them.
 */
export type CallEnd = (error: ConnectError | undefined, header: Headers | undefined) => void;

/**
 * Calls `next` and reports, exactly once, how the call ended. A unary call
 * ends when its response is ready; a stream when its last message is sent,
 * when it fails, or when the client goes away (reported as the abort
 * reason, CANCELED or DEADLINE_EXCEEDED).
 */
export async function observeCall(
  next: Next,
  req: UnaryRequest | StreamRequest,
  ended: CallEnd,
): Promise<UnaryResponse | StreamResponse> {
  let res: UnaryResponse | StreamResponse;
  try {
    res = await next(req);
  } catch (error) {
    ended(ConnectError.from(error), undefined);
    throw error;
  }
  if (!res.stream) {
    ended(undefined, res.header);
    return res;
  }
  return { ...res, message: watchStream(res, req.signal, ended) };
}

async function* watchStream(
  res: StreamResponse,
  signal: AbortSignal,
  ended: CallEnd,
): AsyncGenerator<StreamResponse["message"] extends AsyncIterable<infer M> ? M : never> {
  let error: ConnectError | undefined;
  let complete = false;
  try {
    yield* res.message;
    complete = true;
  } catch (e) {
    error = ConnectError.from(e);
    throw e;
  } finally {
    // Left early without an error: the client went away or the deadline
    // passed; Connect then abandons the stream through return().
    if (!complete && !error) {
      error = signal.aborted
        ? abortError(signal.reason)
        : new ConnectError("the stream was abandoned", Code.Canceled);
    }
    ended(error, res.header);
  }
}

function abortError(reason: unknown): ConnectError {
  return reason instanceof ConnectError
    ? reason
    : new ConnectError("the client went away", Code.Canceled);
}
