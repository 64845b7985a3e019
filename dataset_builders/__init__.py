"""Builders that turn official benchmark sources into Hugging Face datasets (parquet + dataset card).

Sub-modules (imported on demand, so ``import dataset_builders`` stays light):

* :mod:`dataset_builders.paths` — ``data_dir()`` / ``models_dir()`` / ``cache_dir()``;
* :mod:`dataset_builders.matbench` — MatBench v0.1, 13 tasks x official 5 folds;
* :mod:`dataset_builders.llm4mat` — LLM4Mat-Bench (10 datasets, 65 tasks) from the official CSVs;
* :mod:`dataset_builders.corpus` — deduplicated formula corpora with a benchmark leakage guard;
* :mod:`dataset_builders.embeddings` — CHGNet / matgl TensorNet structure embeddings, sharded and resumable;
* :mod:`dataset_builders.publish` — upload a built folder to the Hub.

Command line: ``python -m crossmat.dataset_builders <matbench|llm4mat|corpus|embeddings|publish> --help``.
"""
