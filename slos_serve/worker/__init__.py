"""What prefill and decode workers share: the gRPC service, request conversion, CLI."""
