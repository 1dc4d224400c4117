#!/usr/bin/env node
// The `agent-gateway` command (package.json "bin"). The service is
// TypeScript run by tsx, as `npm start` does; registering tsx's loader in
// this process, rather than spawning `node --import tsx`, keeps one process
// so that signals and the exit code need no forwarding.
import { register } from "tsx/esm/api";

register();
await import("../src/main.ts");
