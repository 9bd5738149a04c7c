"""Local stand-ins for what AWS provides (software NSM, KMS emulator) and `clave up`. Never in the image."""
