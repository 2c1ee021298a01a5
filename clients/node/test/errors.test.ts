/**
 * Offline checks (no services): the ErrorInfo decoding of a grpc-status-details-bin trailer and
 * the resolution of the services' addresses.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";

import { create, toBinary } from "@bufbuild/protobuf";
import { base64Encode, BinaryWriter } from "@bufbuild/protobuf/wire";
import { ConnectError } from "@connectrpc/connect";

import { StatusSchema } from "../src/gen/google/rpc/status_pb.js";
import { Code, decodeErrorInfo, resolveTargets, TuneforgeError } from "../src/index.js";

function errorInfoBytes(reason: string, domain: string, metadata: Record<string, string>) {
  const w = new BinaryWriter().tag(1, 2).string(reason).tag(2, 2).string(domain);
  for (const [k, v] of Object.entries(metadata)) {
    w.tag(3, 2).fork().tag(1, 2).string(k).tag(2, 2).string(v).join();
  }
  return w.finish();
}

const INFO = errorInfoBytes("RESOURCE_NOT_FOUND", "tuneforge.ai", {
  resource: "projects/default/models/nope",
  field: "name",
});

describe("errors", () => {
  it("decodes google.rpc.ErrorInfo", () => {
    assert.deepEqual(decodeErrorInfo(INFO), {
      reason: "RESOURCE_NOT_FOUND",
      domain: "tuneforge.ai",
      metadata: { resource: "projects/default/models/nope", field: "name" },
    });
  });

  it("reads the reason from the details Connect decoded", () => {
    // What Connect's gRPC transport leaves on a received error: the Status's details, raw.
    const err = new ConnectError("model not found", Code.NotFound);
    err.details.push({ type: "google.rpc.ErrorInfo", value: INFO });
    const e = TuneforgeError.from(err);
    assert.equal(e.code, Code.NotFound);
    assert.equal(e.codeName, "NOT_FOUND");
    assert.equal(e.reason, "RESOURCE_NOT_FOUND");
    assert.equal(e.field, "name");
    assert.equal(e.message, "NotFound (RESOURCE_NOT_FOUND): model not found");
  });

  it("reads the reason from a raw grpc-status-details-bin trailer", () => {
    const status = create(StatusSchema, {
      code: Code.NotFound,
      message: "model not found",
      details: [{ typeUrl: "type.googleapis.com/google.rpc.ErrorInfo", value: INFO }],
    });
    const trailer = base64Encode(toBinary(StatusSchema, status), "std_raw");
    const err = new ConnectError(
      "model not found",
      Code.NotFound,
      new Headers({ "grpc-status-details-bin": trailer, "x-request-id": "r-1" }),
    );
    const e = TuneforgeError.from(err);
    assert.equal(e.reason, "RESOURCE_NOT_FOUND");
    assert.equal(e.domain, "tuneforge.ai");
    assert.equal(e.requestId, "r-1");
  });

  it("has no reason when the server sent no details", () => {
    const e = TuneforgeError.from(new ConnectError("down", Code.Unavailable));
    assert.equal(e.reason, "");
    assert.equal(e.codeName, "UNAVAILABLE");
  });
});

describe("targets", () => {
  it("takes env, then stack.json, then the default ports; explicit targets win", () => {
    const home = mkdtempSync(join(tmpdir(), "tuneforge-home-"));
    writeFileSync(
      join(home, "stack.json"),
      JSON.stringify({ components: { training: { address: "127.0.0.1:6002" } } }),
    );
    const env = { TUNEFORGE_HOME: home, TUNEFORGE_DATASETS_TARGET: "10.0.0.1:7001" };
    assert.deepEqual(resolveTargets({ targets: { inference: "h:9" } }, env), {
      datasets: "10.0.0.1:7001",
      training: "127.0.0.1:6002",
      conversion: "127.0.0.1:50053",
      inference: "h:9",
    });
    assert.equal(resolveTargets({ host: "gpu-box" }, env).training, "gpu-box:50052");
    rmSync(home, { recursive: true, force: true });
  });
});
