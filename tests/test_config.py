import pytest

from ncsn.config import ConfigError, load_config, named_configs, to_yaml


def test_named_configs_carry_the_paper_settings():
    assert {"digits", "fashion_mnist", "mnist", "cifar10", "celeba"} <= set(named_configs())
    for name, ngf, channels, size, flip in [
        ("mnist", 64, 1, 28, False), ("fashion_mnist", 64, 1, 28, False),
        ("cifar10", 128, 3, 32, True), ("celeba", 128, 3, 32, True),
    ]:
        c = load_config(name)
        assert (c.model.ngf, c.model.in_channels, c.data.image_size, c.data.random_flip) == (ngf, channels, size, flip)
        assert (c.model.sigma_max, c.model.sigma_min, c.model.num_scales) == (1.0, 0.01, 10)
        t = c.training
        assert (t.lr, t.beta1, t.beta2, t.eps, t.weight_decay) == (1e-3, 0.9, 0.999, 1e-8, 0.0)
        assert (t.batch_size, t.n_iters, t.snapshot_every, t.ema) == (128, 200_000, 5000, False)
        assert c.data.dequantize and c.sampling.ald.n_steps_each == 100 and c.sampling.ald.step_lr == 2e-5


def test_overrides_are_typed():
    c = load_config("cifar10", ["training.lr=2e-4", "training.ema=true", "model.ngf=32", "training.grad_clip=1"])
    assert c.training.lr == 2e-4 and c.training.ema is True and c.model.ngf == 32 and c.training.grad_clip == 1.0


@pytest.mark.parametrize(
    "override,message",
    [
        ("training.lrr=1", "unknown config key 'training.lrr'"),
        ("optimizer.lr=1", "unknown config key 'optimizer'"),
        ("training.lr=fast", "config key 'training.lr'"),
        ("training.lr=-1", "config key 'training.lr': must be positive"),
        ("model.sigma_min=-0.1", "config key 'model.sigma_min': must be positive"),
        ("model.sigma_max=0.001", "config key 'model.sigma_max': must exceed"),
        ("data.image_size=27", "config key 'data.image_size'"),
        ("model.in_channels=3", "config key 'model.in_channels'"),
        ("data.dataset=imagenet", "config key 'data.dataset'"),
        ("sampling.convention=book", "config key 'sampling.ald.convention'"),
        ("training.batch_size=0", "config key 'training.batch_size'"),
        ("nokey", "must look like section.key=value"),
        ("training=5", "config key 'training': is a section; set its keys (training.KEY=VALUE), got 5"),
        ("training.lr=inf", "config key 'training.lr': must be a finite number, got inf"),
        ("training.lr=.inf", "config key 'training.lr': must be a finite number, got inf"),
        ("model.sigma_max=inf", "config key 'model.sigma_max': must be a finite number"),
        ("training.anneal_power=nan", "config key 'training.anneal_power': must be a finite number, got nan"),
        ("training.grad_clip=inf", "config key 'training.grad_clip': must be a finite number"),
        ("training.weight_decay=inf", "config key 'training.weight_decay': must be a finite number"),
        ("sampling.step_lr=inf", "config key 'sampling.ald.step_lr': must be a finite number"),
        ("training.objective=vp", "config key 'training.objective': unknown 'vp'; choose from ladder, ve, edm"),
        ("training.objective=ve", "config key 'training.objective': ve draws sigma off the ladder, but ncsn_v1 is "
                                  "conditioned on ladder levels; use ladder"),
        ("training.likelihood_weighting=true", "config key 'training.likelihood_weighting': applies to objective ve, "
                                               "not ladder"),
        ("training.t_eps=0", "config key 'training.t_eps': must lie in (0, 1), got 0.0"),
        ("training.p_std=0", "config key 'training.p_std': must be positive, got 0.0"),
        ("training.p_mean=nan", "config key 'training.p_mean': must be a finite number, got nan"),
        ("model.preconditioning=karras", "config key 'model.preconditioning': unknown 'karras'; choose from none, edm"),
        ("model.sigma_data=0", "config key 'model.sigma_data': must be positive, got 0.0"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("mnist", [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_yaml_files_and_round_trip(tmp_path):
    c = load_config("digits", ["training.n_iters=7"])
    path = tmp_path / "run.yaml"
    path.write_text(to_yaml(c))
    assert load_config(str(path)) == c
    (tmp_path / "bad.yaml").write_text("training:\n  learning_rate: 1\n")
    with pytest.raises(ConfigError, match="unknown config key 'training.learning_rate'"):
        load_config(str(tmp_path / "bad.yaml"))
    with pytest.raises(ConfigError, match="unknown config 'cifar100'"):
        load_config("cifar100")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"))
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match=r"binary.yaml: not a YAML text file"):
        load_config(str(tmp_path / "binary.yaml"))
    (tmp_path / "infinite.yaml").write_text("training:\n  lr: .inf\n")
    with pytest.raises(ConfigError, match="'training.lr': must be a finite number"):
        load_config(str(tmp_path / "infinite.yaml"))


def test_a_folder_named_like_a_preset_does_not_hide_the_preset(tmp_path, monkeypatch):
    """`ncsn train --config digits --workdir digits`, run twice: the run folder is no config file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()
    assert load_config("digits") == load_config("digits", [])
    assert load_config("digits").data.dataset == "digits"
    (tmp_path / "mnist").write_text(to_yaml(load_config("digits", ["training.n_iters=3"])))  # a file: read as given
    assert load_config("mnist").training.n_iters == 3


@pytest.mark.parametrize("name, levels, eps", [("cifar10_v2", 232, 6.2e-6), ("celeba64_v2", 500, 3.3e-6),
                                               ("fashion_mnist_v2", 105, 1.063e-5)])
def test_v2_presets_follow_the_noise_plan_and_the_v2_recipe(name, levels, eps):
    from ncsn.noise_plan import ladder_plan

    config = load_config(name)
    m, t, s = config.model, config.training, config.sampling.ald
    assert m.arch == "ncsnv2" and m.scale_by_sigma and m.num_scales == levels and m.sigma_min == 0.01
    assert t.ema and t.ema_rate == 0.999 and t.lr == 1e-4 and s.denoise and not config.data.dequantize
    dim = m.in_channels * config.data.image_size**2
    plan = ladder_plan(m.sigma_max, dim, s.n_steps_each)
    assert plan["num_scales"] == levels and s.step_lr == pytest.approx(plan["step_lr"], rel=0.02)


def test_an_unconditional_network_must_divide_by_sigma():
    with pytest.raises(ConfigError, match="model.scale_by_sigma.*ncsnv2 is unconditional"):
        load_config("cifar10_v2", ["model.scale_by_sigma=false"])


def test_objective_settings_default_to_the_ladder_and_combine_freely_on_networks_that_take_any_sigma():
    """Every preset but the NCSN++ ones (Score-SDE's recipe) keeps the ladder DSM and the plain EMA (so its runs are
    what they were); a network that takes any sigma takes every objective, with or without EDM's preconditioning."""
    for name in named_configs():
        config = load_config(name, ["data.root=/images"])
        t, m = config.training, config.model
        if m.arch == "ncsnpp":
            continue
        assert (t.objective, t.reduce_mean, t.likelihood_weighting, t.ema_warmup, m.preconditioning) == (
            "ladder", False, False, False, "none"), name
    for objective in ("ladder", "ve", "edm"):
        for preconditioning in ("none", "edm"):
            c = load_config("mnist", ["model.arch=ncsnv2", "model.scale_by_sigma=true",
                                      f"training.objective={objective}", f"model.preconditioning={preconditioning}"])
            assert (c.training.objective, c.model.preconditioning) == (objective, preconditioning)
    c = load_config("mnist", ["model.arch=ncsnv2", "model.scale_by_sigma=true", "training.objective=ve",
                              "training.reduce_mean=true", "training.likelihood_weighting=true", "training.t_eps=1e-3"])
    assert c.training.reduce_mean and c.training.likelihood_weighting and c.training.t_eps == 1e-3
