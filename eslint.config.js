// Lint catches what the type checker lets through: promises nobody awaits
// or handles, and type-only imports that would be emitted.
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["gen/**", "node_modules/**", "bench/peer/**", "data/**", ".exp/**"] },
  {
    files: ["**/*.ts"],
    languageOptions: {
      parser: tseslint.parser,
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    plugins: { "@typescript-eslint": tseslint.plugin },
    rules: {
      "@typescript-eslint/no-floating-promises": "error",
      "@typescript-eslint/no-misused-promises": "error",
      "@typescript-eslint/consistent-type-imports": "error",
      "no-console": "error",
    },
  },
  {
    // The command-line entry points and the benchmark talk to a terminal.
    files: ["src/main.ts", "src/keys-command.ts", "bench/**", "scripts/**"],
    rules: { "no-console": "off" },
  },
);
