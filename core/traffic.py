"""Address pairs shaped like real traffic, for benchmarks: pure Python, in every install.

What a benchmark's speed depends on is the pairs' token lengths (padding, attention), not what
the words mean. Real pairs (CCKS 2021, GUIDE section 2) tokenize, with [CLS] and two [SEP], to
mean 36.5 tokens, p50 35, p90 52, p95 57, p99 67, p99.9 80, max 98. Here each pair's length is
drawn from those quantiles; each side is an address written from a small table of places,
roads, numbers and buildings (a registry-style line against a terse map-style one), cut to its
share of the length from the front, so what is kept is the specific end (numbers, buildings,
rooms) and pairs almost never repeat (a repeat would be deduplicated by the engine and flatter
it). One token a character, as the bundled tokenizer counts Chinese text and digits.

The pairs carry no label. Labelled pairs for training come from `mgeo.training.synth` (the
`training` extra); GPU and worker images ship without it, so `mgeo bench` uses this by default.
"""

from __future__ import annotations

import random
from bisect import bisect_right

# Quantiles of the tokenized pair length, CLS/SEP included. p75 is not published: 43 makes the
# piecewise-linear distribution's mean 36.6, against the measured 36.5.
LENGTH_QUANTILES = ((0.0, 12), (0.01, 17), (0.1, 24), (0.5, 35), (0.75, 43), (0.9, 52),
                    (0.95, 57), (0.99, 67), (0.999, 80), (1.0, 98))
SPECIAL_TOKENS = 3  # [CLS] a [SEP] b [SEP]

_CITIES = {
    "浙江省": {"杭州市": ("西湖区", "上城区", "拱墅区", "滨江区", "余杭区"),
               "宁波市": ("鄞州区", "海曙区", "江北区")},
    "江苏省": {"南京市": ("栖霞区", "玄武区", "鼓楼区", "江宁区"),
               "苏州市": ("姑苏区", "吴中区", "工业园区")},
    "广东省": {"广州市": ("天河区", "越秀区", "海珠区", "番禺区"),
               "深圳市": ("南山区", "福田区", "宝安区", "龙岗区")},
    "四川省": {"成都市": ("武侯区", "锦江区", "青羊区", "高新区")},
    "湖北省": {"武汉市": ("江汉区", "武昌区", "洪山区", "汉阳区")},
    "陕西省": {"西安市": ("雁塔区", "碑林区", "未央区"), "榆林市": ("榆阳区", "神木市")},
    "北京市": {"北京市": ("海淀区", "朝阳区", "东城区", "丰台区")},
    "上海市": {"上海市": ("浦东新区", "徐汇区", "静安区", "闵行区")},
}
_ROAD_WORDS = ("人民", "解放", "中山", "建设", "文枢", "紫萱", "仙林", "康安", "学院", "新华",
               "和平", "幸福", "长江", "黄河", "东风", "光明", "胜利", "科技", "文化", "滨江")
_ROAD_KINDS = ("路", "街", "大道", "东路", "西路", "南路", "北路", "巷")
_COMPOUNDS = ("花园", "小区", "公寓", "家园", "新村", "大厦", "广场", "中心", "苑", "城")
_PLACES = ("人民医院", "第二医院", "第一中学", "实验小学", "社区服务中心", "人力社保局", "书店",
           "超市", "银行", "酒店", "派出所", "商住楼", "菜市场", "体育馆", "图书馆", "邮政局")
_STREETS = ("街道", "镇", "乡")


def length_at(u: float) -> int:
    """The pair length (tokens) at quantile `u` in [0, 1]: linear between the known ones."""
    qs = [q for q, _ in LENGTH_QUANTILES]
    i = min(max(bisect_right(qs, u), 1), len(qs) - 1)
    (q0, l0), (q1, l1) = LENGTH_QUANTILES[i - 1], LENGTH_QUANTILES[i]
    return round(l0 + (l1 - l0) * (u - q0) / (q1 - q0))


def _registry(rng: random.Random, province: str, city: str, district: str, road: str,
              number: int) -> list[str]:
    """A registry-style address, general to specific: province down to the room."""
    name = rng.choice(_ROAD_WORDS) + rng.choice(_COMPOUNDS)
    return [province, city, district, rng.choice(_ROAD_WORDS) + rng.choice(_STREETS), road,
            f"{number}号", name, f"{rng.randint(1, 40)}栋", f"{rng.randint(1, 6)}单元",
            f"{rng.randint(1, 33)}{rng.randint(1, 4):02d}室"]


def _terse(rng: random.Random, city: str, district: str, road: str, number: int) -> list[str]:
    """A map-style address: district, road and number, then a place there."""
    return [city, district, road, f"{number}号", rng.choice(_PLACES),
            f"{rng.randint(1, 12)}楼", rng.choice(("东门", "西门", "南门", "北门", "一层"))]


def _fit(parts: list[str], chars: int, rng: random.Random) -> str:
    """`chars` characters of the address: its specific end, with more general words in
    front when it is too short."""
    text = "".join(parts)
    while len(text) < chars:
        text = rng.choice(_ROAD_WORDS) + rng.choice(_COMPOUNDS) + text
    return text[len(text) - chars:]


def pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` pairs `{"id", "addr1", "addr2"}` whose lengths follow real traffic; the same seed
    gives the same pairs, and a longer list starts with a shorter one."""
    rng = random.Random(seed)
    provinces = sorted(_CITIES)
    rows = []
    for i in range(n):
        chars = length_at(rng.random()) - SPECIAL_TOKENS
        first = max(1, min(chars - 1, round(chars * rng.uniform(0.35, 0.65))))
        province = rng.choice(provinces)
        city = rng.choice(sorted(_CITIES[province]))
        district = rng.choice(_CITIES[province][city])
        road = rng.choice(_ROAD_WORDS) + rng.choice(_ROAD_KINDS)
        number = rng.randint(1, 999)
        a = _fit(_registry(rng, province, city, district, road, number), first, rng)
        b = _fit(_terse(rng, city, district, road, number), chars - first, rng)
        rows.append({"id": str(i), "addr1": a, "addr2": b})
    return rows


DESCRIPTION = ("mgeo.traffic (unlabelled pairs, lengths drawn to real traffic's: mean 36.5 "
               "tokens, p50 35, p90 52, p99 67)")
