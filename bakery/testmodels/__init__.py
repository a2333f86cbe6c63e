"""Random-weight models of the real architectures and file formats, built locally.

Not part of the craft: real checkpoints cannot be downloaded where this project is
built and tested, so the demo and the tests use these to prove the pipeline end to
end (`train.base_model = "tiny"` builds `tiny_sd15`; the demo's tagger is `tiny_wd14`,
its mask model `inspyrenet`).
"""
