import type { Agent } from "../runtime/index.js";
import { approval } from "./approval.js";
import { echo } from "./echo.js";
import { ticker } from "./ticker.js";
import { wordfreq } from "./wordfreq.js";

/** The agents every gateway hosts. */
export const builtinAgents: Agent[] = [echo, ticker, approval, wordfreq];
