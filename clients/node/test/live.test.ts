/**
 * The client against the live services (scripts/test_node_client.sh starts them and passes
 * their addresses in TUNEFORGE_<SERVICE>_TARGET): a tiny model is imported, a chat dataset
 * uploaded, a LoRA job trained and followed to SUCCEEDED, a generation streamed, and a missing
 * model answers NOT_FOUND with its reason.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";

import {
  Code,
  TUNEFORGE_DOMAIN,
  Tuneforge,
  TuneforgeError,
  datasets,
  inference,
  models,
  training,
} from "../src/index.js";

const live = Boolean(process.env["TUNEFORGE_TRAINING_TARGET"]);
const skip = live ? false : "no live stack: run scripts/test_node_client.sh";

// Ids unique per run, so that the tests also pass against a stack that already holds data.
const run = randomBytes(3).toString("hex");
const MODEL = `node-tiny-${run}`;
const DATASET = `node-words-${run}`;
const WORDS = ["apple", "river", "stone", "cloud"];
const ROWS = Array.from({ length: 16 }, (_, i) => ({
  messages: [
    { role: "user", content: `Item ${i}: say the word number ${i % 4}.` },
    { role: "assistant", content: WORDS[i % 4] },
  ],
}));

describe("tuneforge node client (live services)", { skip }, () => {
  let client: Tuneforge;
  let dir: string;

  before(() => {
    // Targets from TUNEFORGE_<SERVICE>_TARGET, as the Python SDK resolves them.
    client = new Tuneforge({ timeoutMs: 30_000, longTimeoutMs: 150_000 });
    dir = mkdtempSync(join(tmpdir(), "tuneforge-node-"));
  });

  after(() => {
    client?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("imports a tiny model from a preset", async () => {
    const model = await client.models.importModel(MODEL, { preset: "tiny-llama" });
    assert.equal(model.name, `projects/default/models/${MODEL}`);
    assert.equal(model.kind, models.Model_Kind.BASE);
    assert.ok(model.parameterCount > 0n);
    const again = await client.models.get(MODEL);
    assert.equal(again.name, model.name);
  });

  it("uploads a chat dataset from a file (client stream: header, chunks, trailer)", async () => {
    const path = join(dir, "words.jsonl");
    writeFileSync(path, ROWS.map((r) => JSON.stringify(r)).join("\n") + "\n");
    const progress: number[] = [];
    const dataset = await client.datasets.upload(path, {
      datasetId: DATASET,
      model: MODEL,
      validationSplit: 0.25,
      seed: 1,
      chunkSize: 256, // several chunks, so the stream carries more than one
      onProgress: (sent) => progress.push(sent),
    });
    assert.equal(dataset.name, `projects/default/datasets/${DATASET}`);
    assert.equal(dataset.state, datasets.Dataset_State.READY);
    assert.equal(dataset.format, datasets.Dataset_Format.CHAT_JSONL);
    assert.equal(dataset.rowCount, 16n);
    assert.equal(dataset.trainRowCount + dataset.validationRowCount, 16n);
    assert.ok(dataset.validationRowCount > 0n);
    assert.ok((dataset.statistics?.trainableTokens ?? 0n) > 0n);
    assert.ok(progress.length > 1, `chunks sent: ${progress.length}`);
  });

  it("uploads rows given in memory, and names the bad line of an invalid one", async () => {
    const dataset = await client.datasets.upload(ROWS.slice(0, 4), { format: "chat" });
    assert.equal(dataset.state, datasets.Dataset_State.READY);
    assert.equal(dataset.rowCount, 4n);
    const bad = [ROWS[0], { messages: [{ role: "wizard", content: "hi" }] }];
    const error = await client.datasets.upload(bad, { format: "chat" }).then(
      () => assert.fail("an invalid dataset was accepted"),
      (e: unknown) => e,
    );
    assert.ok(error instanceof TuneforgeError, String(error));
    assert.equal(error.reason, "DATASET_INVALID");
    assert.equal(error.domain, TUNEFORGE_DOMAIN);
    assert.equal(error.metadata["line"], "2", JSON.stringify(error.metadata));
  });

  it("trains a LoRA job and streams its events to SUCCEEDED", async () => {
    const created = await client.jobs.create(MODEL, DATASET, {
      method: "lora",
      hyperparameters: {
        maxSteps: 4,
        maxSeqLen: 64,
        batchSize: 4,
        gradientAccumulationSteps: 1,
        learningRate: 1e-2,
        precision: "fp32",
      },
    });
    assert.match(created.name, /^projects\/default\/trainingJobs\//);
    assert.equal((await client.jobs.get(created.name)).name, created.name);

    const states: training.TrainingJob_State[] = [];
    const steps: number[] = [];
    let lastSequence = 0n;
    for await (const event of client.jobs.watch(created.name)) {
      assert.ok(event.sequence > lastSequence, "events arrive in sequence order");
      lastSequence = event.sequence;
      if (event.payload.case === "stateChange") states.push(event.payload.value.state);
      if (event.payload.case === "metrics") steps.push(Number(event.payload.value.step));
    }
    // The server ends the stream when the job ends.
    assert.equal(
      states.at(-1),
      training.TrainingJob_State.SUCCEEDED,
      `states: ${states.map((s) => training.TrainingJob_State[s]).join(" -> ")}`,
    );
    assert.ok(states.includes(training.TrainingJob_State.RUNNING));
    assert.ok(steps.includes(4), `metric steps: ${steps}`);

    const job = await client.jobs.get(created.name);
    assert.equal(job.state, training.TrainingJob_State.SUCCEEDED);
    assert.equal(job.progress?.step, 4n);
    assert.ok(job.outputModel, "the job names its adapter");
    // wait() on an ended job replays the history and returns at once.
    const waited = await client.jobs.wait(created.name, { timeoutMs: 30_000 });
    assert.equal(waited.state, training.TrainingJob_State.SUCCEEDED);
  });

  it("streams a generation from the tiny model", async () => {
    const parts: inference.GenerateStreamResponse[] = [];
    for await (const part of client.inference.generateStream(MODEL, "Item 1: say the word", {
      maxTokens: 8,
      temperature: 0,
      seed: 1,
    })) {
      parts.push(part);
    }
    assert.ok(parts.length >= 2, `messages: ${parts.length}`);
    const last = parts.at(-1)!;
    assert.notEqual(last.finishReason, inference.FinishReason.FINISH_REASON_UNSPECIFIED);
    assert.ok(last.usage, "the last message carries the usage");
    assert.ok(last.usage.completionTokens > 0 && last.usage.completionTokens <= 8);
    assert.ok(last.usage.promptTokens > 0);

    // A stream interval longer than the generation: the first text, then the rest with the end.
    const paced: inference.GenerateStreamResponse[] = [];
    for await (const part of client.inference.generateStream(MODEL, "Item 1: say the word", {
      maxTokens: 8,
      temperature: 0,
      seed: 1,
      streamIntervalMs: 10_000,
    })) {
      paced.push(part);
    }
    assert.ok(paced.length <= 2, `messages: ${paced.length}`);
    assert.equal(paced.map((p) => p.text).join(""), parts.map((p) => p.text).join(""));
  });

  it("answers NOT_FOUND with the ErrorInfo reason for a missing model", async () => {
    const missing = `missing-${run}`;
    const error = await client.models.get(missing).then(
      () => assert.fail("a missing model was found"),
      (e: unknown) => e,
    );
    assert.ok(error instanceof TuneforgeError, String(error));
    assert.equal(error.code, Code.NotFound);
    assert.equal(error.codeName, "NOT_FOUND");
    assert.equal(error.reason, "RESOURCE_NOT_FOUND");
    assert.equal(error.domain, TUNEFORGE_DOMAIN);
    assert.ok(
      Object.values(error.metadata).some((v) => v.includes(missing)),
      `metadata names the model: ${JSON.stringify(error.metadata)}`,
    );
    assert.match(error.message, /^NotFound \(RESOURCE_NOT_FOUND\): /);
  });

  it("raises the same error from a server stream (generation on a missing model)", async () => {
    const call = async () => {
      for await (const _ of client.inference.generateStream(`missing-${run}`, "hi")) {
        // nothing arrives
      }
    };
    await assert.rejects(call, (e: unknown) => {
      assert.ok(e instanceof TuneforgeError, String(e));
      assert.equal(e.code, Code.NotFound);
      assert.equal(e.reason, "RESOURCE_NOT_FOUND");
      return true;
    });
  });
});
