"""Pure code both processes share: errors, Go/JSON compatibility, Ethereum encoders, envelopes. No I/O."""
