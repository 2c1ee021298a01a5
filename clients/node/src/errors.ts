/**
 * The one error type of the client: the gRPC status code, the google.rpc.ErrorInfo reason
 * (UPPER_SNAKE, domain "tuneforge.ai") and its metadata, read from the `grpc-status-details-bin`
 * trailer that every tuneforge service sets on a failed call.
 */
import { fromBinary } from "@bufbuild/protobuf";
import { base64Decode, BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { Code, ConnectError } from "@connectrpc/connect";

import { StatusSchema } from "./gen/google/rpc/status_pb.js";

export { Code };

export const ERROR_INFO_TYPE = "google.rpc.ErrorInfo";
export const TUNEFORGE_DOMAIN = "tuneforge.ai";
const STATUS_DETAILS_TRAILER = "grpc-status-details-bin";

/** google.rpc.ErrorInfo, decoded. */
export interface ErrorInfo {
  reason: string;
  domain: string;
  metadata: Record<string, string>;
}

export class TuneforgeError extends Error {
  override readonly name = "TuneforgeError";

  constructor(
    /** The canonical gRPC code (Code.NotFound = 5, ...). */
    readonly code: Code,
    /** The server's message, without the code prefix that ConnectError adds. */
    readonly rawMessage: string,
    /** ErrorInfo.reason, e.g. "RESOURCE_NOT_FOUND"; "" when the server sent none. */
    readonly reason: string = "",
    /** ErrorInfo.domain ("tuneforge.ai" for errors of the tuneforge services). */
    readonly domain: string = "",
    /** ErrorInfo.metadata: the dynamic values, e.g. {"field": "model_id", "line": "17"}. */
    readonly metadata: Record<string, string> = {},
    /** The server's x-request-id, to find the call in the services' logs. */
    readonly requestId: string = "",
    options?: { cause?: unknown },
  ) {
    const head = Code[code] + (reason ? ` (${reason})` : "");
    super(`${head}: ${rawMessage}`, options);
  }

  /** The name of the code as the gRPC spec spells it: "NOT_FOUND", "INVALID_ARGUMENT", ... */
  get codeName(): string {
    return (Code[this.code] ?? "Unknown").replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
  }

  /** The request field the error is about ("" when it is about none). */
  get field(): string {
    return this.metadata["field"] ?? "";
  }

  /** Wraps whatever a call threw: a ConnectError keeps its code and details. */
  static from(error: unknown): TuneforgeError {
    if (error instanceof TuneforgeError) return error;
    const err = ConnectError.from(error);
    const info = errorInfo(err);
    return new TuneforgeError(
      err.code,
      err.rawMessage,
      info?.reason ?? "",
      info?.domain ?? "",
      info?.metadata ?? {},
      err.metadata.get("x-request-id") ?? "",
      { cause: error },
    );
  }
}

/**
 * The ErrorInfo of a failed call. Connect decodes the google.rpc.Status of the
 * `grpc-status-details-bin` trailer into `err.details`; where a proxy or an older transport
 * left the raw trailer in the metadata instead, it is decoded here.
 */
export function errorInfo(err: ConnectError): ErrorInfo | undefined {
  const details: { type: string; value: Uint8Array }[] = [];
  for (const d of err.details) {
    // Details decoded from the wire are {type, value}; ones a caller built carry a schema.
    if ("type" in d && d.value instanceof Uint8Array) details.push({ type: d.type, value: d.value });
  }
  const raw = err.metadata.get(STATUS_DETAILS_TRAILER);
  if (details.length === 0 && raw) {
    const status = fromBinary(StatusSchema, base64Decode(raw));
    for (const any of status.details) {
      details.push({ type: any.typeUrl.slice(any.typeUrl.lastIndexOf("/") + 1), value: any.value });
    }
  }
  const found = details.find((d) => d.type === ERROR_INFO_TYPE);
  return found ? decodeErrorInfo(found.value) : undefined;
}

/**
 * google.rpc.ErrorInfo {string reason = 1; string domain = 2; map<string, string> metadata = 3;}
 * decoded by hand: it is the only message of google/rpc/error_details.proto the client needs,
 * and the contract (protos/) does not import that file, so no stub is generated for it.
 */
export function decodeErrorInfo(bytes: Uint8Array): ErrorInfo {
  const info: ErrorInfo = { reason: "", domain: "", metadata: {} };
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1 && wireType === WireType.LengthDelimited) info.reason = reader.string();
    else if (field === 2 && wireType === WireType.LengthDelimited) info.domain = reader.string();
    else if (field === 3 && wireType === WireType.LengthDelimited) {
      const entry = new BinaryReader(reader.bytes());
      let key = "";
      let value = "";
      while (entry.pos < entry.len) {
        const [f, w] = entry.tag();
        if (f === 1 && w === WireType.LengthDelimited) key = entry.string();
        else if (f === 2 && w === WireType.LengthDelimited) value = entry.string();
        else entry.skip(w);
      }
      info.metadata[key] = value;
    } else reader.skip(wireType);
  }
  return info;
}
