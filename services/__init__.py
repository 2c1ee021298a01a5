"""tuneforge's gRPC services: datasets, training (with the model catalog), conversion, inference."""
