"""Parameter counts and multiply-adds against the papers and torchvision
(../shared/reference/numbers.md)."""

import pytest

import reszoo
from reszoo import flops

PAPER_PARAMS = {
    # He et al. 2015, Table 6, option A.
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "resnet1202": 19_421_274,
    # He et al. 2016, Table 3.
    "preact_resnet164": 1_703_258,
    "preact_resnet1001": 10_327_706,
    "preact_resnet18_cifar": 11_171_146,
    # Huang et al. 2017, Table 2.
    "densenet40_k12": 1_019_722,
    "densenet100_k12": 6_979_642,
    "densenet100_k24": 27_249_082,
    "densenet_bc100_k12": 769_162,
    "densenet_bc250_k24": 15_324_406,
    "densenet_bc190_k40": 25_624_430,
    # torchvision num_params.
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "densenet121": 7_978_856,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
    "densenet161": 28_681_000,
    "densenet264": 33_337_704,
    # timm 1.0.31, pretrained=False (numbers.md; also checked against timm itself in test_timm.py).
    "resnet18d": 11_708_744,
    "resnet34d": 21_816_904,
    "resnet50d": 25_576_264,
    "resnet101d": 44_568_392,
    "resnet152d": 60_212_040,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
    "seresnet50": 28_088_024,
    "resnetv2_50": 25_549_352,
    "resnetv2_101": 44_541_480,
    # Zagoruyko & Komodakis 2016 (36.5M, 11.0M, 8.9M; WRN-28-10's exact count as in numbers.md).
    "wrn28_10": 36_479_194,
    "wrn16_8": 10_961_370,
    "wrn40_4": 8_949_210,
}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_trainable_params_equal_reference(registered, name):
    assert reszoo.count_params(registered(name)) == PAPER_PARAMS[name]


def test_every_reference_count_is_registered():
    assert set(PAPER_PARAMS) <= set(reszoo.list_models())


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_plain_twin_matches_resnet(registered, depth):
    plain, res = registered(f"plain{depth}"), registered(f"resnet{depth}")
    assert reszoo.count_params(plain) == reszoo.count_params(res)
    conv_names = lambda m: [l.name for l in m.layers if type(l).__name__ == "Conv2D"]
    assert conv_names(plain) == conv_names(res)
    assert not any(type(l).__name__ == "Add" for l in plain.layers)


@pytest.mark.parametrize("depth", [18, 34])
def test_imagenet_plain_twin_matches_option_a_resnet(registered, depth):
    option_a = reszoo.create_model(f"resnet{depth}", shortcut="A")
    assert reszoo.count_params(registered(f"plain{depth}")) == reszoo.count_params(option_a)
    # Option B adds exactly the 1x1 projections + their BN at the three stage transitions.
    widths = [(64, 128), (128, 256), (256, 512)]
    projections = sum(cin * cout + 2 * cout for cin, cout in widths)
    assert reszoo.count_params(registered(f"resnet{depth}")) - reszoo.count_params(option_a) == projections


def test_preact_resnet110_has_resnet110_params(registered):
    # Pre-activation moves each BN in front of its conv: the stem BN (16 ch) goes, the final
    # BN-ReLU (64 ch) comes, and the first block of stages 2 and 3 normalises its 16/32-ch
    # input instead of a 32/64-ch output: +128 - 32 - 32 - 64 = 0 (paper: both 1.7M).
    assert reszoo.count_params(registered("preact_resnet110")) == PAPER_PARAMS["resnet110"]


# torchvision's published GFLOPS (multiply-accumulates) for the same nets.
TORCHVISION_GMACS = {
    "resnet18": 1.814, "resnet34": 3.664, "resnet50": 4.089, "resnet101": 7.801,
    "resnet152": 11.514, "densenet121": 2.834, "densenet161": 7.728, "densenet169": 3.36,
    "densenet201": 4.291,
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_GMACS))
def test_macs_match_torchvision(registered, name):
    assert flops.count_macs(registered(name)) / 1e9 == pytest.approx(TORCHVISION_GMACS[name], abs=6e-4)


def test_macs_of_resnet56_by_hand(registered):
    # conv1: 32*32*16*27; stage s (s=0,1,2): 9 blocks x 2 convs of (32/2^s)^2 * (16*2^s)^2 * 9,
    # each stage's first conv reading half the channels; fc: 64*10.
    macs = 32 * 32 * 16 * 27 + 64 * 10
    for s in range(3):
        hw, c = (32 // 2**s) ** 2, 16 * 2**s
        macs += 18 * hw * c * c * 9
        if s > 0:
            macs -= hw * c * (c // 2) * 9
    assert flops.count_macs(registered("resnet56")) == macs
    # Weights shared, work not: a weight-tied stage runs its block once per call.
    assert flops.count_macs(reszoo.create_model("resnet56", weight_tied=True)) == macs
    assert flops.count_macs(reszoo.create_model("resnet56", weight_tied="convs")) == macs


def test_macs_count_recomputed_densenet_layers_once():
    standard = reszoo.create_model("densenet_bc100_k12", blocks=(2, 2, 2))
    efficient = reszoo.create_model("densenet_bc100_k12", blocks=(2, 2, 2), memory_efficient=True)
    assert flops.count_macs(efficient) == flops.count_macs(standard) > 0


def test_macs_unknown_for_unknown_spatial_size():
    model = reszoo.create_model("resnet20", input_shape=(None, None, 3), include_top=False)
    assert flops.count_macs(model) is None


def test_model_card_resnet56(registered):
    card = reszoo.model_card("resnet56")
    assert card["params"] == 853_018
    assert card["family"] == "resnet"
    assert card["depth"] == 56
    assert card["published"] == {"cifar10_error": 6.97}
    assert card["macs"] == flops.count_macs(registered("resnet56"))
    assert card["input_shape"] == (32, 32, 3) and card["num_classes"] == 10
    assert "1512.03385" in card["paper"]
    # Keras' count_params also counts BN moving mean/variance: 2 per channel of each BN.
    bn_channels = sum(l.gamma.shape[0] for l in registered("resnet56").layers if hasattr(l, "moving_mean"))
    assert card["total_params"] == card["params"] + 2 * bn_channels


def test_model_card_densenet_depth_and_errors():
    card = reszoo.model_card("densenet_bc100_k12")
    assert card["depth"] == 100 and card["family"] == "densenet"
    assert card["published"]["cifar10+_error"] == 4.51
    assert card["params"] == 769_162


def test_match_params_densenet_bc_to_resnet56_budget():
    overrides, params = reszoo.match_params(
        "densenet_bc100_k12", 853_018, depth=[76, 82, 88], growth_rate=range(8, 20)
    )
    assert abs(params - 853_018) <= 0.01 * 853_018
    assert reszoo.count_params(reszoo.create_model("densenet_bc100_k12", **overrides)) == params


def test_match_params_wider_plain_net_to_resnet56_budget():
    overrides, params = reszoo.match_params(
        "plain20", 853_018, depth=range(20, 56, 6), base_width=range(17, 40)
    )
    assert overrides["depth"] < 56
    assert abs(params - 853_018) <= 0.01 * 853_018


def test_match_params_reports_unreachable_budget():
    with pytest.raises(ValueError, match="from 853,018"):
        reszoo.match_params("plain20", 853_018, base_width=range(16, 30))
