#!/usr/bin/env node
// Compile every contracts/src/*.sol with the pinned solc-js and write one artifact per contract
// to contracts/artifacts/<ContractName>.json.
//
// Usage:
//   node contracts/build.mjs           write the artifacts and remove stale ones
//   node contracts/build.mjs --check   compile in memory and exit 1, naming every artifact that
//                                      differs from the file on disk, is missing or is stale
//
// The output depends only on the sources, the installed solc and @openzeppelin/contracts
// versions and the fixed settings below, so CI can rebuild and compare it byte for byte.

import { createHash } from "node:crypto";
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const CONTRACTS_DIR = path.dirname(fileURLToPath(import.meta.url));
const SRC_DIR = path.join(CONTRACTS_DIR, "src");
const ARTIFACTS_DIR = path.join(CONTRACTS_DIR, "artifacts");
const NODE_MODULES_DIR = path.join(CONTRACTS_DIR, "node_modules");

const require = createRequire(import.meta.url);

// evmVersion "cancun" keeps the bytecode runnable on py-evm (eth-tester) as well as on anvil.
const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
  outputSelection: {
    "*": {
      "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "metadata"],
    },
  },
};

// Settings recorded in each artifact: the compiler settings without outputSelection, which
// only controls what solc reports and has no effect on the bytecode.
const RECORDED_SETTINGS = {
  optimizer: SETTINGS.optimizer,
  evmVersion: SETTINGS.evmVersion,
};

function loadSolc() {
  let solc;
  try {
    solc = require("solc");
  } catch (error) {
    fail(`solc is not installed (${error.message}). Run: npm ci --prefix contracts`);
  }

  const packageJson = readPackageJson();
  const pinned = packageJson.devDependencies?.solc ?? packageJson.dependencies?.solc;
  const installed = solc.version().split("+")[0];
  if (installed !== pinned) {
    fail(`installed solc ${installed} does not match the pin ${pinned} in contracts/package.json. ` +
      "Run: npm ci --prefix contracts");
  }
  return solc;
}

function readPackageJson() {
  return JSON.parse(fs.readFileSync(path.join(CONTRACTS_DIR, "package.json"), "utf8"));
}

function fail(message) {
  console.error(`build.mjs: ${message}`);
  process.exit(1);
}

// Source unit names are paths relative to contracts/ ("src/TestStablecoin.sol") or npm
// import paths ("@openzeppelin/contracts/token/ERC20/ERC20.sol"). The compiler stores these
// names in the metadata hash at the end of the bytecode, so they must not depend on where the
// repository is checked out.
function listSourceNames() {
  if (!fs.existsSync(SRC_DIR)) {
    fail(`source folder not found: ${SRC_DIR}`);
  }
  const names = fs.readdirSync(SRC_DIR)
    .filter((file) => file.endsWith(".sol"))
    .sort()
    .map((file) => `src/${file}`);
  if (names.length === 0) {
    fail(`no .sol files found in ${SRC_DIR}`);
  }
  return names;
}

function resolveSourcePath(sourceName) {
  const base = sourceName.startsWith("src/") ? CONTRACTS_DIR : NODE_MODULES_DIR;
  const resolved = path.resolve(base, sourceName);
  if (!resolved.startsWith(base + path.sep)) {
    throw new Error(`import path escapes ${base}: ${sourceName}`);
  }
  return resolved;
}

// Reads each source once and remembers its text, so the recorded sha256 values are those of
// the exact bytes the compiler saw.
function createSourceReader() {
  const texts = new Map();

  function read(sourceName) {
    if (!texts.has(sourceName)) {
      texts.set(sourceName, fs.readFileSync(resolveSourcePath(sourceName), "utf8"));
    }
    return texts.get(sourceName);
  }

  function importCallback(sourceName) {
    try {
      return { contents: read(sourceName) };
    } catch (error) {
      return { error: `cannot read ${sourceName}: ${error.message}` };
    }
  }

  return { read, importCallback, texts };
}

function compile(solc, sourceNames, reader) {
  const sources = {};
  for (const name of sourceNames) {
    sources[name] = { content: reader.read(name) };
  }
  const input = { language: "Solidity", sources, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: reader.importCallback }));

  const diagnostics = output.errors ?? [];
  for (const diagnostic of diagnostics) {
    console.error(diagnostic.formattedMessage ?? diagnostic.message);
  }
  if (diagnostics.some((diagnostic) => diagnostic.severity === "error")) {
    fail("compilation failed");
  }
  return output;
}

function sha256(text) {
  return createHash("sha256").update(text, "utf8").digest("hex");
}

// Returns a copy of value with the keys of every object sorted, so the JSON text does not
// depend on the order in which solc or this script created the keys.
function sortKeys(value) {
  if (Array.isArray(value)) {
    return value.map(sortKeys);
  }
  if (value !== null && typeof value === "object") {
    const sorted = {};
    for (const key of Object.keys(value).sort()) {
      sorted[key] = sortKeys(value[key]);
    }
    return sorted;
  }
  return value;
}

function hexPrefixed(object) {
  return `0x${object ?? ""}`;
}

function buildArtifact(contractName, sourceName, contract, compilerVersion, sourceTexts) {
  // The metadata lists every source unit this contract's compilation read, imports included.
  const metadata = JSON.parse(contract.metadata);
  const sourceHashes = {};
  for (const name of Object.keys(metadata.sources).sort()) {
    sourceHashes[name] = { sha256: sha256(sourceTexts.get(name)) };
  }

  return {
    contractName,
    sourceName,
    abi: sortKeys(contract.abi),
    bytecode: hexPrefixed(contract.evm.bytecode.object),
    deployedBytecode: hexPrefixed(contract.evm.deployedBytecode.object),
    compiler: { name: "solc", version: compilerVersion },
    settings: sortKeys(RECORDED_SETTINGS),
    sources: sourceHashes,
  };
}

// Returns a Map from artifact file name to its exact JSON text.
function renderArtifacts(solc, output, sourceNames, sourceTexts) {
  const rendered = new Map();
  const origins = new Map();
  for (const sourceName of sourceNames) {
    const contracts = output.contracts?.[sourceName] ?? {};
    for (const contractName of Object.keys(contracts).sort()) {
      const fileName = `${contractName}.json`;
      if (rendered.has(fileName)) {
        fail(`contract ${contractName} is defined in both ${origins.get(fileName)} and ${sourceName}; ` +
          "artifact names must be unique");
      }
      const artifact = buildArtifact(
        contractName, sourceName, contracts[contractName], solc.version(), sourceTexts,
      );
      rendered.set(fileName, `${JSON.stringify(artifact, null, 2)}\n`);
      origins.set(fileName, sourceName);
    }
  }
  return rendered;
}

function listArtifactFiles() {
  if (!fs.existsSync(ARTIFACTS_DIR)) {
    return [];
  }
  return fs.readdirSync(ARTIFACTS_DIR).filter((file) => file.endsWith(".json")).sort();
}

function writeArtifacts(rendered) {
  fs.mkdirSync(ARTIFACTS_DIR, { recursive: true });
  for (const [fileName, text] of rendered) {
    fs.writeFileSync(path.join(ARTIFACTS_DIR, fileName), text);
    console.log(`wrote artifacts/${fileName}`);
  }
  for (const fileName of listArtifactFiles()) {
    if (!rendered.has(fileName)) {
      fs.rmSync(path.join(ARTIFACTS_DIR, fileName));
      console.log(`removed stale artifacts/${fileName}`);
    }
  }
}

// Returns one line per artifact that differs from the rebuilt text, is missing or is stale.
function compareArtifacts(rendered) {
  const problems = [];
  for (const [fileName, text] of rendered) {
    const filePath = path.join(ARTIFACTS_DIR, fileName);
    if (!fs.existsSync(filePath)) {
      problems.push(`artifacts/${fileName}: missing`);
    } else if (fs.readFileSync(filePath, "utf8") !== text) {
      problems.push(`artifacts/${fileName}: differs from the rebuilt artifact`);
    }
  }
  for (const fileName of listArtifactFiles()) {
    if (!rendered.has(fileName)) {
      problems.push(`artifacts/${fileName}: stale, no contract in contracts/src produces it`);
    }
  }
  return problems;
}

function main(argv) {
  const unknown = argv.filter((arg) => arg !== "--check");
  if (unknown.length > 0) {
    fail(`unknown argument ${unknown.join(" ")}. Usage: node contracts/build.mjs [--check]`);
  }
  const checkOnly = argv.includes("--check");

  const solc = loadSolc();
  const sourceNames = listSourceNames();
  const reader = createSourceReader();
  const output = compile(solc, sourceNames, reader);
  const rendered = renderArtifacts(solc, output, sourceNames, reader.texts);

  if (!checkOnly) {
    writeArtifacts(rendered);
    return;
  }

  const problems = compareArtifacts(rendered);
  for (const problem of problems) {
    console.error(problem);
  }
  if (problems.length > 0) {
    fail(`${problems.length} artifact(s) out of date. Run: node contracts/build.mjs`);
  }
  console.log(`${rendered.size} artifact(s) match their sources`);
}

main(process.argv.slice(2));
