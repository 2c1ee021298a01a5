/**
 * `new Tuneforge({targets})`: a typed facade over the generated stubs, with one namespace per
 * resource (`models`, `datasets`, `jobs`, `inference`), mirroring the Python SDK
 * (clients/python/tuneforge/client.py). Calls return the generated protobuf-es messages; every
 * failure is a TuneforgeError carrying the code and the ErrorInfo reason.
 */
import { createHash } from "node:crypto";
import { createReadStream, existsSync, readFileSync } from "node:fs";
import { stat } from "node:fs/promises";
import { homedir } from "node:os";
import { basename, join, resolve } from "node:path";

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

import { Code, TuneforgeError } from "./errors.js";
import {
  ChatMessageSchema,
  GenerationParametersSchema,
} from "./gen/tuneforge/common/v1/common_pb.js";
import { ConversionService } from "./gen/tuneforge/conversion/v1/conversion_service_pb.js";
import {
  DatasetService,
  Dataset_Format,
  Dataset_ValidationPolicy,
  type Dataset,
  type UploadDatasetRequest,
  UploadDatasetRequestSchema,
} from "./gen/tuneforge/datasets/v1/dataset_service_pb.js";
import { EvaluationService } from "./gen/tuneforge/inference/v1/evaluation_service_pb.js";
import {
  Backend,
  InferenceService,
  type GenerateResponse,
  type GenerateStreamResponse,
} from "./gen/tuneforge/inference/v1/inference_service_pb.js";
import { ModelService, type Model } from "./gen/tuneforge/training/v1/model_service_pb.js";
import {
  Method,
  TrainingJob_State,
  TrainingService,
  type TrainingJob,
  type TrainingJobEvent,
} from "./gen/tuneforge/training/v1/training_service_pb.js";

export const SERVICES = ["datasets", "training", "conversion", "inference"] as const;
export type ServiceName = (typeof SERVICES)[number];
export const DEFAULT_PORTS: Record<ServiceName, number> = {
  datasets: 50051,
  training: 50052,
  conversion: 50053,
  inference: 50054,
};

export interface TuneforgeOptions {
  /** "host:port" of each service; missing ones come from resolveTargets(). */
  targets?: Partial<Record<ServiceName, string>>;
  /** One host for all four services on their default ports ("10.0.0.5"). */
  host?: string;
  /** Project of the resource names (default "default"). */
  project?: string;
  /** Deadline of ordinary calls (default 30 s). */
  timeoutMs?: number;
  /** Deadline of long calls: imports, uploads, watches, generations (default 30 min). */
  longTimeoutMs?: number;
}

/**
 * The services' addresses, as the Python SDK finds them: `host` on the default ports, else
 * TUNEFORGE_<SERVICE>_TARGET, else $TUNEFORGE_HOME/stack.json (written by `tuneforge up`), else
 * 127.0.0.1 on the default ports; `targets` override each.
 */
export function resolveTargets(
  options: Pick<TuneforgeOptions, "targets" | "host"> = {},
  env: NodeJS.ProcessEnv = process.env,
): Record<ServiceName, string> {
  const resolved = {} as Record<ServiceName, string>;
  let stack: Record<string, { address?: string }> = {};
  if (!options.host) {
    const home = env["TUNEFORGE_HOME"] || join(homedir(), ".tuneforge");
    const file = join(home, "stack.json");
    if (existsSync(file)) {
      try {
        stack = JSON.parse(readFileSync(file, "utf8")).components ?? {};
      } catch {
        stack = {};
      }
    }
  }
  for (const s of SERVICES) {
    resolved[s] = options.host
      ? `${options.host.replace(/^[a-z]+:\/\//, "")}:${DEFAULT_PORTS[s]}`
      : env[`TUNEFORGE_${s.toUpperCase()}_TARGET`] ||
        stack[s]?.address ||
        `127.0.0.1:${DEFAULT_PORTS[s]}`;
  }
  return { ...resolved, ...dropUndefined(options.targets ?? {}) };
}

function dropUndefined<T extends object>(o: T): { [K in keyof T]: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as never;
}

/** Calls a unary method, turning any failure into TuneforgeError. */
async function unary<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    throw TuneforgeError.from(error);
  }
}

/** The messages of a streaming response, failures as TuneforgeError. */
async function* stream<T>(messages: AsyncIterable<T>): AsyncGenerator<T> {
  try {
    yield* messages;
  } catch (error) {
    throw TuneforgeError.from(error);
  }
}

export class Tuneforge {
  readonly targets: Record<ServiceName, string>;
  readonly project: string;
  readonly timeoutMs: number;
  readonly longTimeoutMs: number;
  /** The generated Connect clients, for the methods the facade does not wrap. */
  readonly stubs: {
    models: Client<typeof ModelService>;
    training: Client<typeof TrainingService>;
    datasets: Client<typeof DatasetService>;
    conversion: Client<typeof ConversionService>;
    inference: Client<typeof InferenceService>;
    evaluations: Client<typeof EvaluationService>;
  };
  readonly models: Models;
  readonly datasets: Datasets;
  readonly jobs: Jobs;
  readonly inference: Inference;
  private readonly sessions: Http2SessionManager[] = [];

  constructor(options: TuneforgeOptions = {}) {
    this.targets = resolveTargets(options);
    this.project = options.project ?? "default";
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.longTimeoutMs = options.longTimeoutMs ?? 30 * 60_000;
    const transports = new Map<ServiceName, Transport>();
    for (const s of SERVICES) transports.set(s, this.transport(this.targets[s]));
    const t = (s: ServiceName) => transports.get(s)!;
    this.stubs = {
      models: createClient(ModelService, t("training")),
      training: createClient(TrainingService, t("training")),
      datasets: createClient(DatasetService, t("datasets")),
      conversion: createClient(ConversionService, t("conversion")),
      inference: createClient(InferenceService, t("inference")),
      evaluations: createClient(EvaluationService, t("inference")),
    };
    this.models = new Models(this);
    this.datasets = new Datasets(this);
    this.jobs = new Jobs(this);
    this.inference = new Inference(this);
  }

  private transport(target: string): Transport {
    const baseUrl = /^https?:\/\//.test(target) ? target : `http://${target}`;
    // One HTTP/2 session per service, kept so that close() can end it (an open session would
    // keep the Node process alive).
    const sessionManager = new Http2SessionManager(baseUrl);
    this.sessions.push(sessionManager);
    return createGrpcTransport({ baseUrl, sessionManager });
  }

  /** "projects/{project}". */
  get parent(): string {
    return `projects/${this.project}`;
  }

  /** A full model name from a short one ("tiny" -> "projects/default/models/tiny"). */
  modelName(model: string): string {
    return model.startsWith("projects/") ? model : `${this.parent}/models/${model}`;
  }

  datasetName(dataset: string): string {
    return dataset.startsWith("projects/") ? dataset : `${this.parent}/datasets/${dataset}`;
  }

  jobName(job: string): string {
    return job.startsWith("projects/") ? job : `${this.parent}/trainingJobs/${job}`;
  }

  /** Closes the connections; calls in flight are aborted. */
  close(): void {
    for (const s of this.sessions) s.abort();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

// --- models ------------------------------------------------------------------------------------

export interface ImportModelOptions {
  /** Exactly one source. Local paths must be readable by the training service. */
  preset?: string;
  hfDir?: string;
  ggufFile?: string;
  uri?: string;
  displayName?: string;
  labels?: Record<string, string>;
  requestId?: string;
  seed?: number;
}

/** `client.models`: the model catalog (hosted by the training service). */
export class Models {
  constructor(private readonly client: Tuneforge) {}

  /** Imports a base model from one source; returns it once it is in the catalog. */
  importModel(modelId: string, options: ImportModelOptions): Promise<Model> {
    const sources = {
      preset: options.preset,
      hfDir: options.hfDir && resolve(options.hfDir),
      ggufFile: options.ggufFile && resolve(options.ggufFile),
      uri: options.uri,
    };
    const given = Object.entries(sources).filter(([, v]) => v);
    if (given.length !== 1) throw new TypeError("give exactly one of preset, hfDir, ggufFile, uri");
    const [[kind, value]] = given as [[keyof typeof sources, string]];
    return unary(() =>
      this.client.stubs.models.importModel(
        {
          parent: this.client.parent,
          modelId,
          source: { case: kind, value },
          displayName: options.displayName ?? "",
          labels: options.labels ?? {},
          requestId: options.requestId ?? "",
          seed: BigInt(options.seed ?? 0),
        },
        { timeoutMs: this.client.longTimeoutMs },
      ),
    );
  }

  get(model: string): Promise<Model> {
    return unary(() =>
      this.client.stubs.models.getModel(
        { name: this.client.modelName(model) },
        { timeoutMs: this.client.timeoutMs },
      ),
    );
  }

  /** Every model of the project, page by page. */
  async *list(filter = ""): AsyncGenerator<Model> {
    let pageToken = "";
    do {
      const page = await unary(() =>
        this.client.stubs.models.listModels(
          { parent: this.client.parent, filter, pageToken },
          { timeoutMs: this.client.timeoutMs },
        ),
      );
      yield* page.models;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }

  async delete(model: string): Promise<void> {
    await unary(() =>
      this.client.stubs.models.deleteModel(
        { name: this.client.modelName(model) },
        { timeoutMs: this.client.timeoutMs },
      ),
    );
  }
}

// --- datasets ----------------------------------------------------------------------------------

const FORMATS: Record<string, Dataset_Format> = {
  chat: Dataset_Format.CHAT_JSONL,
  "prompt-completion": Dataset_Format.PROMPT_COMPLETION_JSONL,
  alpaca: Dataset_Format.ALPACA_JSONL,
  preference: Dataset_Format.PREFERENCE_JSONL,
  csv: Dataset_Format.CSV,
  parquet: Dataset_Format.PARQUET,
};

export interface UploadOptions {
  /** The last segment of the name; generated by the server when empty. */
  datasetId?: string;
  /** "chat", "prompt-completion", "alpaca", "preference", "csv", "parquet"; default: detected. */
  format?: keyof typeof FORMATS;
  /** Catalog model whose tokenizer measures the rows (token statistics, max_seq_len). */
  model?: string;
  maxSeqLen?: number;
  validationSplit?: number;
  seed?: number;
  validationDataset?: string;
  /** Drop invalid rows instead of failing the dataset. */
  skipInvalid?: boolean;
  columnMapping?: Record<string, string>;
  displayName?: string;
  labels?: Record<string, string>;
  requestId?: string;
  /** The file name the server sees (format detection); default: the path's, or "rows.jsonl". */
  fileName?: string;
  chunkSize?: number;
  /** Called after each chunk with the bytes sent and the bytes in all. */
  onProgress?: (sent: number, total: number) => void;
}

/** `client.datasets`: streamed upload, inspection and deletion of datasets. */
export class Datasets {
  constructor(private readonly client: Tuneforge) {}

  /**
   * Streams a dataset to the datasets service (client-streaming UploadDataset: the header, the
   * bytes in chunks, then a trailer with their size and sha256 so that the server can tell a
   * whole upload from a cut-off one). `source` is a file path, or rows (objects, written as
   * JSONL). Returns the READY dataset, or throws TuneforgeError (DATASET_INVALID, metadata
   * naming the first bad line).
   */
  async upload(source: string | readonly object[], options: UploadOptions = {}): Promise<Dataset> {
    const chunkSize = options.chunkSize ?? 1 << 20;
    let size: number;
    let fileName: string;
    let chunks: () => AsyncIterable<Uint8Array>;
    if (typeof source === "string") {
      size = (await stat(source)).size;
      fileName = options.fileName ?? basename(source);
      chunks = () => createReadStream(source, { highWaterMark: chunkSize });
    } else {
      const bytes = Buffer.from(source.map((row) => JSON.stringify(row) + "\n").join(""), "utf8");
      size = bytes.length;
      fileName = options.fileName ?? "rows.jsonl";
      chunks = async function* () {
        for (let i = 0; i < bytes.length; i += chunkSize) yield bytes.subarray(i, i + chunkSize);
      };
    }
    const c = this.client;
    const header = {
      parent: c.parent,
      datasetId: options.datasetId ?? "",
      dataset: {
        displayName: options.displayName ?? "",
        format: options.format ? formatValue(options.format) : Dataset_Format.FORMAT_UNSPECIFIED,
        validationPolicy: options.skipInvalid
          ? Dataset_ValidationPolicy.SKIP_INVALID
          : Dataset_ValidationPolicy.STRICT,
        columnMapping: options.columnMapping ?? {},
        model: options.model ? c.modelName(options.model) : "",
        maxSeqLen: options.maxSeqLen ?? 0,
        split: {
          validationFraction: options.validationSplit ?? 0,
          seed: BigInt(options.seed ?? 0),
          validationDataset: options.validationDataset
            ? c.datasetName(options.validationDataset)
            : "",
        },
        labels: options.labels ?? {},
      },
      fileName,
      sizeBytes: BigInt(size),
      requestId: options.requestId ?? "",
    };
    async function* messages(): AsyncGenerator<UploadDatasetRequest> {
      yield create(UploadDatasetRequestSchema, { payload: { case: "header", value: header } });
      const digest = createHash("sha256");
      let sent = 0;
      for await (const chunk of chunks()) {
        const bytes = chunk instanceof Uint8Array ? chunk : Buffer.from(chunk);
        digest.update(bytes);
        sent += bytes.length;
        yield create(UploadDatasetRequestSchema, { payload: { case: "chunk", value: bytes } });
        options.onProgress?.(sent, size);
      }
      yield create(UploadDatasetRequestSchema, {
        payload: {
          case: "trailer",
          value: { sizeBytes: BigInt(sent), sha256: digest.digest("hex") },
        },
      });
    }
    return unary(() => c.stubs.datasets.uploadDataset(messages(), { timeoutMs: c.longTimeoutMs }));
  }

  get(dataset: string): Promise<Dataset> {
    return unary(() =>
      this.client.stubs.datasets.getDataset(
        { name: this.client.datasetName(dataset) },
        { timeoutMs: this.client.timeoutMs },
      ),
    );
  }

  async *list(filter = ""): AsyncGenerator<Dataset> {
    let pageToken = "";
    do {
      const page = await unary(() =>
        this.client.stubs.datasets.listDatasets(
          { parent: this.client.parent, filter, pageToken },
          { timeoutMs: this.client.timeoutMs },
        ),
      );
      yield* page.datasets;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }

  async delete(dataset: string): Promise<void> {
    await unary(() =>
      this.client.stubs.datasets.deleteDataset(
        { name: this.client.datasetName(dataset) },
        { timeoutMs: this.client.timeoutMs },
      ),
    );
  }
}

function formatValue(format: string): Dataset_Format {
  const value =
    FORMATS[format] ?? Dataset_Format[format.toUpperCase() as keyof typeof Dataset_Format];
  if (value === undefined) {
    throw new TypeError(`unknown format "${format}"; use one of ${Object.keys(FORMATS).join(", ")}`);
  }
  return value;
}

// --- training jobs -----------------------------------------------------------------------------

/** Hyperparameters with plain numbers (int64 fields are converted to bigint). */
export interface Hyperparameters {
  epochs?: number;
  maxSteps?: number;
  learningRate?: number;
  batchSize?: number;
  gradientAccumulationSteps?: number;
  maxSeqLen?: number;
  warmupRatio?: number;
  weightDecay?: number;
  lrScheduler?: string;
  packing?: boolean;
  evalIntervalSteps?: number;
  checkpointIntervalSteps?: number;
  /** "fp32", "bf16", "fp16". */
  precision?: string;
  maxGradNorm?: number;
}

export interface CreateJobOptions {
  /** "lora" (default), "qlora", "dora", "full". */
  method?: "lora" | "qlora" | "dora" | "full";
  hyperparameters?: Hyperparameters;
  lora?: { rank?: number; alpha?: number; dropout?: number; targetModules?: string[] };
  validationDataset?: string;
  processesPerNode?: number;
  zeroStage?: number;
  offloadOptimizer?: boolean;
  offloadParameters?: boolean;
  seed?: number;
  suffix?: string;
  priority?: number;
  jobId?: string;
  displayName?: string;
  labels?: Record<string, string>;
  requestId?: string;
}

export const ENDED_STATES: ReadonlySet<TrainingJob_State> = new Set([
  TrainingJob_State.SUCCEEDED,
  TrainingJob_State.FAILED,
  TrainingJob_State.CANCELLED,
]);

/** `client.jobs`: fine-tuning jobs (training service). */
export class Jobs {
  constructor(private readonly client: Tuneforge) {}

  /** Queues a fine-tuning job; unset hyperparameters are chosen by the service. */
  create(model: string, dataset: string, options: CreateJobOptions = {}): Promise<TrainingJob> {
    const c = this.client;
    const hp = options.hyperparameters ?? {};
    const int64 = (v: number | undefined) => (v === undefined ? undefined : BigInt(v));
    const trainingJob = {
      displayName: options.displayName ?? "",
      baseModel: c.modelName(model),
      trainingDataset: c.datasetName(dataset),
      validationDataset: options.validationDataset ? c.datasetName(options.validationDataset) : "",
      method: Method[(options.method ?? "lora").toUpperCase() as keyof typeof Method],
      hyperparameters: {
        ...hp,
        maxSteps: int64(hp.maxSteps),
        evalIntervalSteps: int64(hp.evalIntervalSteps),
        checkpointIntervalSteps: int64(hp.checkpointIntervalSteps),
      },
      lora: options.lora ?? {},
      distribution: {
        processesPerNode: options.processesPerNode ?? 0,
        zeroStage: options.zeroStage ?? 0,
        offloadOptimizer: options.offloadOptimizer ?? false,
        offloadParameters: options.offloadParameters ?? false,
      },
      suffix: options.suffix ?? "",
      seed: BigInt(options.seed ?? 0),
      priority: options.priority ?? 0,
      labels: options.labels ?? {},
    };
    if (trainingJob.method === undefined) throw new TypeError(`unknown method ${options.method}`);
    return unary(() =>
      c.stubs.training.createTrainingJob(
        {
          parent: c.parent,
          trainingJobId: options.jobId ?? "",
          trainingJob,
          requestId: options.requestId ?? "",
        },
        { timeoutMs: c.timeoutMs },
      ),
    );
  }

  get(job: string): Promise<TrainingJob> {
    return unary(() =>
      this.client.stubs.training.getTrainingJob(
        { name: this.client.jobName(job) },
        { timeoutMs: this.client.timeoutMs },
      ),
    );
  }

  async *list(filter = ""): AsyncGenerator<TrainingJob> {
    let pageToken = "";
    do {
      const page = await unary(() =>
        this.client.stubs.training.listTrainingJobs(
          { parent: this.client.parent, filter, pageToken },
          { timeoutMs: this.client.timeoutMs },
        ),
      );
      yield* page.trainingJobs;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }

  cancel(job: string): Promise<TrainingJob> {
    return unary(() =>
      this.client.stubs.training.cancelTrainingJob(
        { name: this.client.jobName(job) },
        { timeoutMs: this.client.timeoutMs },
      ),
    );
  }

  /**
   * The job's events (server stream WatchTrainingJob): its history after `afterSequence`, then
   * live ones, until the job ends. Breaking out of the loop, or `signal`, cancels the call.
   */
  watch(
    job: string,
    options: { afterSequence?: number; signal?: AbortSignal; timeoutMs?: number } = {},
  ): AsyncGenerator<TrainingJobEvent> {
    const c = this.client;
    return stream(
      c.stubs.training.watchTrainingJob(
        { name: c.jobName(job), afterSequence: BigInt(options.afterSequence ?? 0) },
        { timeoutMs: options.timeoutMs ?? c.longTimeoutMs, signal: options.signal },
      ),
    );
  }

  /**
   * Follows the job to its end, reconnecting (after the last sequence seen) when the stream
   * breaks with UNAVAILABLE or DEADLINE_EXCEEDED; returns the ended job.
   */
  async wait(
    job: string,
    options: { onEvent?: (event: TrainingJobEvent) => void; timeoutMs?: number } = {},
  ): Promise<TrainingJob> {
    const deadline = options.timeoutMs === undefined ? Infinity : Date.now() + options.timeoutMs;
    let after = 0;
    for (;;) {
      const left = deadline - Date.now();
      try {
        for await (const event of this.watch(job, {
          afterSequence: after,
          timeoutMs: Number.isFinite(left) ? Math.max(1, left) : undefined,
        })) {
          after = Number(event.sequence);
          options.onEvent?.(event);
        }
      } catch (error) {
        const code = (error as TuneforgeError).code;
        if (code !== Code.Unavailable && code !== Code.DeadlineExceeded) throw error;
      }
      const current = await this.get(job);
      if (ENDED_STATES.has(current.state)) return current;
      if (Date.now() > deadline) {
        throw new TuneforgeError(
          Code.DeadlineExceeded,
          `${current.name} is still ${TrainingJob_State[current.state]}`,
        );
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

// --- inference ---------------------------------------------------------------------------------

export interface GenerateOptions {
  adapter?: string;
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  stop?: string[];
  seed?: number;
  repetitionPenalty?: number;
  backend?: "pytorch" | "onnx_runtime";
  signal?: AbortSignal;
  timeoutMs?: number;
}

export interface StreamOptions extends GenerateOptions {
  /** At least this many ms between messages, text joined (0: every token; unset: the server's). */
  streamIntervalMs?: number;
}

function streamOptions(options: StreamOptions) {
  return options.streamIntervalMs === undefined
    ? undefined
    : { intervalMs: options.streamIntervalMs };
}

/** `client.inference`: completions and chat, whole or streamed, on catalog models. */
export class Inference {
  constructor(private readonly client: Tuneforge) {}

  private common(model: string, options: GenerateOptions) {
    return {
      model: this.client.modelName(model),
      adapter: options.adapter ? this.client.modelName(options.adapter) : "",
      parameters: create(GenerationParametersSchema, {
        maxTokens: options.maxTokens ?? 0,
        temperature: options.temperature,
        topP: options.topP,
        topK: options.topK,
        stop: options.stop ?? [],
        seed: options.seed === undefined ? undefined : BigInt(options.seed),
        repetitionPenalty: options.repetitionPenalty,
      }),
      backend: options.backend
        ? Backend[options.backend.toUpperCase() as keyof typeof Backend]
        : Backend.BACKEND_UNSPECIFIED,
    };
  }

  private callOptions(options: GenerateOptions) {
    return { timeoutMs: options.timeoutMs ?? this.client.longTimeoutMs, signal: options.signal };
  }

  generate(model: string, prompt: string, options: GenerateOptions = {}): Promise<GenerateResponse> {
    return unary(() =>
      this.client.stubs.inference.generate(
        { ...this.common(model, options), prompt },
        this.callOptions(options),
      ),
    );
  }

  /** Text deltas as they are produced; the last message has finishReason and usage. */
  generateStream(
    model: string,
    prompt: string,
    options: StreamOptions = {},
  ): AsyncGenerator<GenerateStreamResponse> {
    return stream(
      this.client.stubs.inference.generateStream(
        { ...this.common(model, options), prompt, streamOptions: streamOptions(options) },
        this.callOptions(options),
      ),
    );
  }

  chat(
    model: string,
    messages: readonly ChatTurn[],
    options: GenerateOptions = {},
  ): Promise<GenerateResponse> {
    return unary(() =>
      this.client.stubs.inference.chat(
        { ...this.common(model, options), messages: messages.map(chatMessage) },
        this.callOptions(options),
      ),
    );
  }

  chatStream(
    model: string,
    messages: readonly ChatTurn[],
    options: StreamOptions = {},
  ): AsyncGenerator<GenerateStreamResponse> {
    return stream(
      this.client.stubs.inference.chatStream(
        {
          ...this.common(model, options),
          messages: messages.map(chatMessage),
          streamOptions: streamOptions(options),
        },
        this.callOptions(options),
      ),
    );
  }
}

/** One turn of a conversation: role "system", "user" or "assistant". */
export interface ChatTurn {
  role: string;
  content: string;
}

function chatMessage(m: ChatTurn): MessageInitShape<typeof ChatMessageSchema> {
  return { role: m.role, content: m.content };
}

