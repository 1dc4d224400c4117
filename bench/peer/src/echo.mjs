// One node that returns its input: the peer of agent-gateway's `echo`.
// JavaScript, so the main type-check does not need this package's deps.
import { Annotation, END, START, StateGraph } from "@langchain/langgraph";

const State = Annotation.Root({
  text: Annotation(),
});

export const graph = new StateGraph(State)
  .addNode("reply", (state) => ({ text: state.text }))
  .addEdge(START, "reply")
  .addEdge("reply", END)
  .compile();
