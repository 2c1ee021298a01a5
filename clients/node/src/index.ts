/** The tuneforge Node client: the facade, its error type, and the generated messages. */
export * from "./client.js";
export * from "./errors.js";

export * as common from "./gen/tuneforge/common/v1/common_pb.js";
export * as datasets from "./gen/tuneforge/datasets/v1/dataset_service_pb.js";
export * as training from "./gen/tuneforge/training/v1/training_service_pb.js";
export * as models from "./gen/tuneforge/training/v1/model_service_pb.js";
export * as conversion from "./gen/tuneforge/conversion/v1/conversion_service_pb.js";
export * as inference from "./gen/tuneforge/inference/v1/inference_service_pb.js";
export * as evaluation from "./gen/tuneforge/inference/v1/evaluation_service_pb.js";
