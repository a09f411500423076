"""Data and vocabulary: ``corpus`` (the built-in corpus, fetched and verified), ``amazon`` (the paper's
files), ``data`` (balance, split, de-duplicate), ``vocab`` (SentencePiece, encodings), ``tokens`` (the
encoded ids), ``divergence`` (Figure 1's JSD). Stands on ``ltnb.base`` only."""
