"""The runtime shared by every service: settings, errors, logging, the gRPC server, the store."""
