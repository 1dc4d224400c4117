// Fails when gen/ is not what `npm run generate` makes from proto/ now, so
// a proto change can never land without its generated code.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";

function files(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path) : [path];
  });
}

const out = mkdtempSync(join(tmpdir(), "agent-gateway-gen-"));
try {
  execFileSync("node_modules/.bin/buf", ["generate", "--output", out], { stdio: "inherit" });
  const fresh = join(out, "gen");
  const want = new Map(files(fresh).map((f) => [relative(fresh, f), readFileSync(f, "utf8")]));
  const have = new Map(files("gen").map((f) => [relative("gen", f), readFileSync(f, "utf8")]));
  const stale = [...new Set([...want.keys(), ...have.keys()])]
    .filter((name) => want.get(name) !== have.get(name))
    .sort();
  if (stale.length > 0) {
    console.error(`gen/ is out of date with proto/; run npm run generate. Differs: ${stale.join(", ")}`);
    process.exit(1);
  }
  console.log(`gen/ is up to date (${want.size} files)`);
} finally {
  rmSync(out, { recursive: true, force: true });
}
