"""Our pure-PyTorch SAM 2 / SAM 2.1: Hiera encoder, SAM heads, memory encoder and memory attention."""
