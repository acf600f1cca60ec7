"""Stand-in for ``optimum.habana.trl``: Gaudi trainers and configs built on the installed TRL's classes, as a
release of optimum-habana for this TRL would ship them. Each trainer records what it was given."""

import dataclasses

import trl
from optimum.habana import record


def _gaudi_config(base):
    @dataclasses.dataclass
    class Config(base):
        use_habana: bool = False
        use_lazy_mode: bool = False
        use_hpu_graphs_for_training: bool = False

    Config.__name__ = Config.__qualname__ = f"Gaudi{base.__name__}"
    return Config


def _gaudi_trainer(base):
    class Trainer(base):
        def __init__(self, *args, gaudi_config=None, **kwargs):
            config = kwargs["args"]
            record("gaudi_trainer", cls=f"Gaudi{base.__name__}", args_cls=type(config).__name__,
                   use_habana=config.use_habana, use_lazy_mode=config.use_lazy_mode,
                   use_fused_adam=gaudi_config.use_fused_adam, use_fused_clip_norm=gaudi_config.use_fused_clip_norm,
                   pad_to_multiple_of=config.pad_to_multiple_of, max_steps=config.max_steps)
            super().__init__(*args, **kwargs)

    Trainer.__name__ = Trainer.__qualname__ = f"Gaudi{base.__name__}"
    return Trainer


GaudiSFTConfig, GaudiSFTTrainer = _gaudi_config(trl.SFTConfig), _gaudi_trainer(trl.SFTTrainer)
GaudiRewardConfig, GaudiRewardTrainer = _gaudi_config(trl.RewardConfig), _gaudi_trainer(trl.RewardTrainer)
GaudiDPOConfig, GaudiDPOTrainer = _gaudi_config(trl.DPOConfig), _gaudi_trainer(trl.DPOTrainer)
