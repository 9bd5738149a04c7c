"""Request parsing with clef's and geth's rules: transaction args, signData content types, Gnosis Safe."""
