"""clave: an Ethereum signer whose keys live only inside an AWS Nitro Enclave.

Rooms (README "Code map"): `core` (pure, shared), `link` (the frame link between the two processes),
`enclave` (what runs in the enclave image), `sidecar` (the parent-side service), `cli`, `dev` (local
stand-ins that never enter the image). Only `core`, `link` and `enclave` are in the enclave image.
"""

__version__ = "0.1.0"
