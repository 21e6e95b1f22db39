"""sslvit: self-supervised pretraining of timm Vision Transformers (MAE, DINO, supervised).

    import sslvit
    run = sslvit.fit("quickstart", trainer={"max_epochs": 5})   # a recipe's name or file, any key overridden
    vit = sslvit.load_backbone(run.run_dir / "checkpoints" / "last.ckpt")   # the timm model, eval mode
    sslvit.export_backbone(run.checkpoint, "exports/digits")               # timm's folder + a model card

``import sslvit`` imports nothing heavy: ``fit``, ``load_backbone`` and ``export_backbone`` bring in
torch and Lightning when first used.  The command line is ``sslvit --help``.
"""

__version__ = "0.3.8"  # the one place the version is written (pyproject.toml reads it from here)

# name -> the module that holds it, imported on first use (PEP 562)
_LAZY = {
    "fit": "sslvit.fit",  # the module is callable: sslvit.fit(recipe, **overrides) runs sslvit.fit.fit
    "Run": "sslvit.fit",
    "load_backbone": "sslvit.checkpoint",
    "export_backbone": "sslvit.export",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'sslvit' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(_LAZY[name])
    return module if name == "fit" else getattr(module, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
