"""Training side of dpt-live: the SynthTalk synthetic world, the HDTF_TFHP lmdb reader/writer
and the trainers that use them."""
