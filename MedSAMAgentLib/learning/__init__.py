"""Learning on cached LiteMedSAM embeddings: the embedding cache and training cases (``embeddings``), the
click-trained LiteMedSAM decoder (``click_decoder``) and its leave-datasets-out evaluation (``leave_out``);
other learners may add their modules here."""
