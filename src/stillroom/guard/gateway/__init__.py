"""`stillroom guard gateway`: an OpenAI-compatible proxy that logs every interaction durably, scores traffic online
and acts on campaigns (flag, throttle, block) with reasons. See docs/gateway.md."""
