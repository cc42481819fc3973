"""One thin module per classify stage, `run(params: ClassifyParams, paths: ClassifyPaths) -> dict`;
`qelm classify-<stage>` runs it through the dispatcher both pipelines share (qelm_core/cli.py::run_stage)."""
