"""Looking inside a trained backbone (``tools/analyze.py``, ``tools/attention_maps.py``).

``attention`` ([class]-token maps), ``attention_distance`` and ``pos_embed_similarity`` and
``filters`` (the ViT paper's Fig. 7), ``attention_similarity`` and ``fourier`` (Park et al. 2023),
``embedding`` (PCA / t-SNE of pooled features), ``reconstruction`` (MAE at several mask ratios);
``layers`` gathers the per-block statistics in one pass, ``analyze`` runs them all and ``report``
writes report.md; ``plotting`` holds the shared matplotlib (Agg) figure helpers.
"""
