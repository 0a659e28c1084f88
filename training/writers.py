"""Writing a `Spot` as text, the way registries, delivery forms and map apps write addresses.

Two registers, chosen per side of a pair:

- **registry** (a business registry, an order form, a delivery address): an administrative prefix
  one to four levels deep, road and number, site, building, unit, room, a tenant company, a
  person or delivery note at the end;
- **map** (a map POI, a terse candidate): no prefix or a short one, then the site name, often
  with the branch, gate or a locating note in brackets (`肯德基(农业路店)`, `万达广场(西门)`),
  or road + number + name.

On top of either, the surface variations people use (labelling rule E2): Chinese numerals,
full-width digits, spaces and commas between parts, `8#楼`, `23F`, `12-2-1601`, a repeated
segment and, where allowed, a one-character homophone typo. None of these changes the place.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mgeo.training import admin
from mgeo.training.admin import short_name, town_short
from mgeo.training.places import Part, Spot

_CN_DIGITS = "零一二三四五六七八九"
_FULL = str.maketrans("0123456789", "０１２３４５６７８９")
_ROMAN = {"1": "Ⅰ", "2": "Ⅱ", "3": "Ⅲ"}
# Homophone typos people make in names (rule E2): never in numbers or direction characters.
_TYPOS = {"场": "厂", "心": "新", "厦": "夏", "湖": "胡", "蓉": "容", "园": "圆", "馆": "管",
          "苑": "院", "峰": "锋", "林": "琳", "华": "化", "泰": "太", "祥": "详", "辉": "晖",
          "座": "坐", "楼": "搂", "城": "成", "庭": "亭", "湾": "弯", "桥": "侨", "则": "泽",
          "滨": "宾", "鸿": "宏", "荣": "容", "佳": "家", "嘉": "家", "锦": "金", "翠": "萃",
          "景": "井", "瑞": "睿", "晨": "辰", "秀": "绣", "雅": "亚", "丽": "莉", "盛": "胜"}


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


@dataclass(frozen=True)
class Style:
    """How one side is written. Recipes start from `registry_style` or `map_style` and pin what
    the pair needs (`must`: admin levels that tell the two places apart; `address`)."""

    register: str = "registry"   # registry or map
    start: int = 2               # first admin level written: 1 province ... 4 township, 5 none
    town: bool = False           # write the township
    shorten: float = 0.0         # chance of each level's short form (浙江 for 浙江省)
    must: tuple[int, ...] = ()   # admin levels written whatever `start` says
    old_names: bool = False      # earlier names (江宁县, 襄樊市, 东山镇 for 东山街道)
    overlay: bool = False        # an overlay zone (高新区, 新区) in place of the county
    address: str = "free"        # full: road and number always written; free: the writer's choice
    alias: bool = False          # a short form of the site name (人社局, 工行, 浙大)
    cn: float = 0.0              # chance of Chinese numerals for small numbers
    noise: float = 1.0           # scale of the surface variations (E2 pairs raise it)
    typo: bool = False           # a homophone typo is allowed (never in a not_match pair)
    fullwidth: float = 0.03      # chance of full-width digits (３６３号)


def registry_style(rng: random.Random) -> Style:
    r = rng.random()
    start = 1 if r < 0.22 else 2 if r < 0.55 else 3 if r < 0.85 else 5
    return Style("registry", start=start, town=rng.random() < (0.45 if start <= 2 else 0.25),
                 shorten=rng.choice((0.0, 0.0, 0.0, 0.3, 0.8)),
                 cn=rng.choice((0.0, 0.0, 0.0, 0.0, 0.4)))


def map_style(rng: random.Random) -> Style:
    r = rng.random()
    start = 5 if r < 0.5 else 3 if r < 0.8 else 2
    return Style("map", start=start, town=rng.random() < 0.1,
                 shorten=rng.choice((0.0, 0.3, 0.8)), cn=rng.choice((0.0, 0.0, 0.0, 0.0, 0.3)))


def any_style(rng: random.Random) -> Style:
    return registry_style(rng) if rng.random() < 0.55 else map_style(rng)


# ---------------------------------------------------------------------------------------------
# Pieces


def _num(rng: random.Random, n: int, cn: float) -> str:
    """A number as digits or, with chance `cn`, in Chinese numerals: only small numbers,
    except in a numerals-heavy style (cn >= 0.9: 三百六十三号)."""
    small = 0 < n < 100 or (cn >= 0.9 and 0 < n < 10000)
    return chinese_number(n) if small and rng.random() < cn else str(n)


def admin_prefix(rng: random.Random, spot: Spot, style: Style) -> list[str]:
    """The administrative levels written before the body, each as its own segment."""
    unit = spot.area.unit
    if unit.city is None:  # a municipality: 北京市朝阳区
        levels = [(2, unit.province), (3, unit.county), (4, spot.area.town)]
    else:
        levels = [(1, unit.province), (2, unit.city), (3, unit.county), (4, spot.area.town)]
    overlay = style.overlay and 3 not in style.must and unit.county is not None
    out = []
    for lv, name in levels:
        if not name:
            continue
        must = lv in style.must or (overlay and lv == 3)
        if lv == 4:
            if not (must or style.town or (overlay and rng.random() < 0.3)):
                continue
        elif lv < style.start and not must and not (overlay and lv == 2):
            continue
        text = name
        if lv == 3 and overlay:
            zone = rng.choice(admin.overlay_zones(unit))
            if rng.random() < 0.25:
                out.append(text)  # 北京市大兴区北京经济技术开发区
            text = zone
        elif style.old_names and lv == 3 and rng.random() < 0.8:
            old = admin.old_county_names(unit)
            text = rng.choice(old) if old else name
        elif style.old_names and lv == 2 and rng.random() < 0.8:
            old = admin.old_city_names(unit)
            text = rng.choice(old) if old else name
        elif style.old_names and lv == 4 and rng.random() < 0.6:
            text = admin.old_town_name(name) or name
        if lv == 4 and rng.random() < 0.3:
            text = town_short(text)
        elif lv < 4 and text == name and rng.random() < style.shorten:
            text = short_name(name)
        out.append(text)
    return out


def part_text(rng: random.Random, part: Part, cn: float) -> str:
    if part.mark == "栋":
        mark = rng.choice(("栋", "栋", "栋", "幢", "号楼", "号楼", "#", "#楼"))
        return _num(rng, int(part.label), cn if "#" not in mark else 0) + mark
    if part.mark == "座":
        if part.label in _ROMAN and rng.random() < 0.4:
            return rng.choice((_ROMAN[part.label], chinese_number(int(part.label)))) + "座"
        return part.label + rng.choice(("座", "座", "座", "栋"))
    if part.mark == "写字楼":
        return "写字楼" + part.label + rng.choice(("座", "座", "栋"))
    if part.mark == "code":
        return part.label + rng.choice(("栋", "栋", "座", ""))
    return part.label + part.mark  # 区, 馆


def floor_text(rng: random.Random, floor: int, cn: float) -> str:
    if floor < 0:
        return rng.choice((f"B{-floor}层", f"B{-floor}", f"负{chinese_number(-floor)}楼",
                           f"地下{chinese_number(-floor)}层"))
    n = _num(rng, floor, cn)
    return rng.choice((f"{n}楼", f"{n}层", f"{n}楼", f"{floor}F", f"F{floor}", f"{floor}层"))


def room_text(rng: random.Random, room: int) -> str:
    return str(room) + rng.choice(("室", "室", "", "", "房", "号"))


def _crossing(rng: random.Random, road: str, cross: str, corner: str | None) -> str:
    joint = rng.choice(("交叉口", "交叉口", "交口", "交汇处", "路口", "十字"))
    text = road + rng.choice(("与", "与", "和", "/")) + cross + joint
    return text + (corner or "")


def _name(rng: random.Random, spot: Spot, style: Style) -> str:
    forms = spot.name
    if style.alias and len(forms) > 1:
        return rng.choice(forms[1:])
    return forms[0]


def _inner(rng: random.Random, spot: Spot, style: Style) -> str:
    forms = spot.inner.forms
    if len(forms) > 1 and (style.alias or rng.random() < 0.2):
        return rng.choice(forms[1:])
    return forms[0]


# ---------------------------------------------------------------------------------------------
# Whole addresses


def body_segments(rng: random.Random, spot: Spot, style: Style) -> list[str]:
    """The address after the administrative prefix, as segments."""
    cn = style.cn
    out: list[str] = []
    bracket: list[str] = []
    map_reg = style.register == "map"
    # Where the site is: village, road and number, or a crossing.
    address: list[str] = []
    if spot.village:
        address.append(spot.village)
        if spot.group is not None:
            g = spot.group
            address.append(rng.choice((f"{_num(rng, g, 0.5)}组", f"{_num(rng, g, 0.5)}组",
                                       f"第{_num(rng, g, 0.5)}村民小组", f"{g}队")))
    if spot.road:
        if spot.cross:
            address.append(_crossing(rng, spot.road, spot.cross, spot.corner))
        else:
            address.append(spot.road)
    if spot.num is not None:
        address.append(_num(rng, spot.num, cn if cn >= 0.9 else cn * 0.5) + "号")
    if spot.named:
        keep = style.address == "full" or not address
        if not keep:
            r = rng.random()
            keep = r < (0.25 if map_reg else 0.85)
            if not keep and map_reg and spot.road and not spot.village and r < 0.55:
                bracket.append(spot.road + (f"{spot.num}号" if spot.num and rng.random() < 0.4
                                            else ""))
        if keep:
            out += address
        out.append(_name(rng, spot, style))
    else:
        out += address
    if spot.branch:
        bracket.insert(0, spot.branch + "店")
    # Inside the site.
    compact = (spot.part is not None and spot.part.mark == "栋" and spot.unit_no is not None
               and spot.room is not None and rng.random() < 0.2 * style.noise)
    if compact:
        out.append(f"{spot.part.label}-{spot.unit_no}-{spot.room}")
    else:
        if spot.part is not None:
            out.append(part_text(rng, spot.part, cn))
        if spot.unit_no is not None:
            out.append(_num(rng, spot.unit_no, cn) + "单元")
        if spot.room is not None:
            out.append(room_text(rng, spot.room))
    if spot.inner is not None:
        inner = _inner(rng, spot, style)
        if spot.floor is not None:
            f = floor_text(rng, spot.floor, cn)
            if map_reg and rng.random() < 0.3:
                out.append(inner)
                bracket.append(f)
            else:
                out += [f, inner]
        else:
            out.append(inner)
    elif spot.floor is not None:
        out.append(floor_text(rng, spot.floor, cn))
    if spot.gate:
        if map_reg or rng.random() < 0.5:
            bracket.append(spot.gate)
        else:
            out.append(spot.gate)
    if spot.note:
        bracket.append(spot.note)
    if bracket:
        open_, close = ("(", ")") if rng.random() < 0.75 else ("（", "）")
        out[-1] = out[-1] + open_ + "".join(bracket[:1]) + close
        for b in bracket[1:]:
            out[-1] = out[-1] + open_ + b + close
    return out


def write(rng: random.Random, spot: Spot, style: Style) -> str:
    """One written form of `spot` in `style`, surface variations included."""
    prefix = admin_prefix(rng, spot, style)
    body = body_segments(rng, spot, style)
    noise = style.noise
    if prefix and rng.random() < 0.02 * noise:
        i = rng.randrange(len(prefix))
        prefix.insert(i, prefix[i])  # 光明区光明区
    if style.typo and rng.random() < 0.05 * noise:
        body = _typo(rng, body)
    r = rng.random()
    if r < 0.07 * noise:
        text = " ".join(prefix + body)
    elif r < 0.1 * noise and len(prefix) >= 2:
        sep = rng.choice(("，", ",", "、"))
        text = sep.join(prefix) + rng.choice((sep, "")) + "".join(body)
    elif r < 0.14 * noise and prefix:
        text = "".join(prefix) + " " + "".join(body)
    else:
        text = "".join(prefix + body)
    if spot.extra:
        text += rng.choice((" ", " ", "", "，")) + spot.extra
    if rng.random() < style.fullwidth:
        text = text.translate(_FULL)
    return text


def _typo(rng: random.Random, body: list[str]) -> list[str]:
    """One homophone swap in a name segment (never a number, never a direction)."""
    spots = [(i, j) for i, seg in enumerate(body) for j, c in enumerate(seg) if c in _TYPOS]
    if not spots:
        return body
    i, j = rng.choice(spots)
    seg = body[i]
    return body[:i] + [seg[:j] + _TYPOS[seg[j]] + seg[j + 1:]] + body[i + 1:]
