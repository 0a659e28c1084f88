"""Pair recipes: one function per labelling rule of `training/LABELLING.md`.

Each recipe draws two spots whose relation the rule names (the same place; a container and a
place inside it; two places in one building; two different places) and the styles to write
them in. The label comes from that relation, never from the surface text. `RECIPES` lists, per
label, the recipes and their shares within the label (design: LABELLING.md, section 5.2).

Rule tags: E1-E7 exact_match, P1-P5 partial_match, N1-N6 not_match (plus `N0`, a random easy
negative).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from mgeo.training import admin, places as pl
from mgeo.training.admin import Area, random_area, short_name
from mgeo.training.landmarks import LANDMARKS
from mgeo.training.places import Inner, Spot
from mgeo.training.writers import Style, any_style, map_style, registry_style


@dataclass(frozen=True)
class Pair:
    a: Spot
    b: Spot
    sa: Style
    sb: Style
    label: str
    tag: str
    anchored: bool = True  # differently named sites keep their road and number (see `draw`)


def _styles(rng: random.Random) -> tuple[Style, Style]:
    return any_style(rng), any_style(rng)


def _detailed_and_terse(rng: random.Random) -> tuple[Style, Style]:
    """A registry side and a map side: the commonest shape of a real pair."""
    return registry_style(rng), (map_style(rng) if rng.random() < 0.7 else registry_style(rng))


def _must(style: Style, *levels: int) -> Style:
    return replace(style, must=tuple(sorted(set(style.must) | set(levels))))


def _full(style: Style) -> Style:
    return replace(style, address="full")


def _site(rng: random.Random, kinds: tuple[str, ...] | None = None,
          area: Area | None = None) -> Spot:
    area = area or random_area(rng)
    return pl.new_site(rng, area, rng.choice(kinds) if kinds else None)


def _on_road(rng: random.Random, spot: Spot) -> Spot:
    """`spot` with a road and a house number (a station may have been drawn without)."""
    if spot.road is None:
        spot = replace(spot, road=pl.road_name(rng, spot.area))
    if spot.num is None:
        spot = replace(spot, num=pl.house_number(rng))
    return spot


def _with_part(rng: random.Random, spot: Spot) -> Spot:
    return replace(spot, part=pl.new_part(rng, spot))


# ---------------------------------------------------------------------------------------------
# exact_match: both sides resolve to the same place


def _site_or_road(rng: random.Random, road_share: float) -> Spot:
    """A site, or (with chance `road_share`) a road without a number."""
    if rng.random() < road_share:
        return pl.new_road_spot(rng, random_area(rng))
    return _site(rng)


def e1_admin(rng: random.Random) -> Pair:
    """E1: the same place under earlier names, an overlay zone or another prefix depth."""
    spot = _site_or_road(rng, 0.3)
    if rng.random() < 0.3 and spot.kind in ("compound", "park", "tower", "mall"):
        spot = _with_part(rng, spot)
    sa, sb = _styles(rng)
    r = rng.random()
    if r < 0.35:
        sa = replace(sa, old_names=True, start=min(sa.start, 3))
    elif r < 0.7:
        sa = replace(sa, overlay=True)
    elif r < 0.85:
        sa = replace(sa, start=1, town=True)
        sb = replace(sb, start=rng.choice((3, 5)), town=False)
    else:
        sa = replace(sa, start=min(sa.start, 3), town=True, old_names=True)
        sb = replace(sb, start=min(sb.start, 3), town=True)
    return Pair(spot, spot, sa, sb, "exact_match", "E1")


def e2_surface(rng: random.Random) -> Pair:
    """E2: the same place; only the surface differs (numerals, spaces, 8#楼, a typo)."""
    spot = _site_or_road(rng, 0.2)
    r = rng.random()
    if spot.kind in ("compound", "park") and r < 0.6:
        spot = _with_part(rng, spot)
        if spot.part.mark == "栋" and rng.random() < 0.6:
            spot = replace(spot, unit_no=rng.randint(1, 6), room=pl.room_number(rng))
    elif spot.kind in ("tower", "mall") and r < 0.5:
        spot = replace(spot, floor=rng.randint(1, 40))
    elif spot.kind == "door" and r < 0.3:
        spot = replace(spot, room=pl.room_number(rng, 12))
    sa, sb = _styles(rng)
    sa = replace(sa, noise=4.0, cn=max(sa.cn, 0.4), typo=True)
    mode = rng.random()
    if mode < 0.25:  # numbers in Chinese numerals: 四十八号, 十二组
        sa = replace(sa, cn=0.95)
    elif mode < 0.4:  # full-width digits
        sa = replace(sa, fullwidth=0.9)
    return Pair(spot, spot, sa, sb, "exact_match", "E2")


def e3_alias(rng: random.Random) -> Pair:
    """E3: the site written in full on one side, by its short form on the other."""
    for _ in range(20):
        spot = _site(rng, ("agency", "agency", "hospital", "school", "campus", "shop", "mall"))
        if len(spot.name) > 1:
            break
    sa, sb = _styles(rng)
    return Pair(spot, spot, sa, replace(sb, alias=True), "exact_match", "E3")


def e4_extra(rng: random.Random) -> Pair:
    """E4: one side adds a tenant, a building name, a person or a delivery note."""
    r = rng.random()
    if r < 0.3:  # a door number and the company or shop registered there
        base = _site(rng, ("door",))
        if rng.random() < 0.3:
            base = replace(base, room=pl.room_number(rng, 20))
        inner = pl.company(rng, base.area) if rng.random() < 0.6 else pl.shop(rng)
        more = replace(base, inner=inner)
    elif r < 0.6:  # a door number and the building, agency or school standing at it
        more = _site(rng, ("tower", "tower", "agency", "school", "hotel", "hospital", "market",
                           "mall"))
        base = replace(more, name=(), kind="door", branch=None)
    elif r < 0.75:  # a room of a building and the company in it
        base = _site(rng, ("tower", "tower", "park"))
        if base.kind == "park":
            base = _with_part(rng, base)
        base = replace(base, room=pl.room_number(rng))
        more = replace(base, inner=pl.company(rng, base.area))
    else:  # a person or a delivery note
        base = _site(rng)
        if base.kind == "compound":
            base = replace(_with_part(rng, base), unit_no=rng.randint(1, 6),
                           room=pl.room_number(rng, 30))
        elif base.kind in ("tower", "door") and rng.random() < 0.5:
            base = replace(base, room=pl.room_number(rng))
        more = replace(base, extra=pl.extra(rng))
    sa, sb = _detailed_and_terse(rng)
    return Pair(more, base, sa, sb, "exact_match", "E4")


def e5_attribute(rng: random.Random) -> Pair:
    """E5: one side adds a floor, room, unit, gate or exit; or both carry compatible ones."""
    base = _site(rng, ("door", "tower", "tower", "compound", "compound", "park", "mall",
                       "mall", "campus", "hospital", "station", "market", "hotel", "agency",
                       "scenic"))
    kind = base.kind
    if kind == "park" or (kind == "compound" and rng.random() < 0.75):
        base = _with_part(rng, base)
    if kind in GATE_KINDS and rng.random() < (0.35 if base.part is None else 0.1):
        more = replace(base, gate=pl.gate(rng, kind))
    elif base.part is not None and base.part.mark == "栋" and kind == "compound":
        more = replace(base, unit_no=rng.randint(1, 6), room=pl.room_number(rng, 30))
        if rng.random() < 0.3:
            more = replace(more, unit_no=None)
    elif kind in ("mall", "hotel", "agency", "station", "hospital", "campus", "market"):
        more = replace(base, floor=rng.choice((-2, -1, 1, 2, 3, 4, 5, 6)))
    else:
        room = pl.room_number(rng)
        r = rng.random()
        if r < 0.15:
            more = replace(base, room=room, floor=room // 100)
        elif r < 0.45:
            more = replace(base, room=room)
        elif r < 0.75:
            more = replace(base, floor=room // 100)
        else:  # compatible on both sides: 1203室 vs 12楼
            more = replace(base, room=room)
            base = replace(base, floor=room // 100)
    sa, sb = _detailed_and_terse(rng)
    return Pair(more, base, sa, sb, "exact_match", "E5")


GATE_KINDS = ("compound", "mall", "campus", "hospital", "station", "park", "market", "scenic")


def e6_locating(rng: random.Random) -> Pair:
    """E6: a locating note (a branch, a landmark, a crossing) that points at the same site."""
    base = _site(rng, ("shop", "shop", "hotel", "mall", "tower", "hospital", "market"))
    r = rng.random()
    if r < 0.35 and base.road:
        if base.kind in ("shop", "mall") and not base.name[0].endswith("支行"):
            more = replace(base, branch=base.branch or base.road)  # 肯德基(农业路店)
        else:  # 华康医院(朝阳北大街)
            more = replace(base, note=base.road, num=None)
        base = replace(base, branch=None)
    elif r < 0.75:
        note = pl.landmark_name(rng, base.area) + pl.relative_note(rng)
        more = replace(base, note=note)
    else:
        cross = pl.road_name(rng, base.area)
        more = replace(base, num=None, cross=cross, corner=pl.corner(rng) if rng.random() < 0.7
                       else None)
        if rng.random() < 0.5:
            base = replace(base, branch=pl.short_name(cross) if base.kind == "shop" else None,
                           note=None if base.kind == "shop" else cross)
    sa, sb = _styles(rng)
    if rng.random() < 0.6:
        sa = replace(sa, register="map")
    return Pair(more, base, sa, sb, "exact_match", "E6")


def e7_landmark(rng: random.Random) -> Pair:
    """E7: a public landmark's street address on one side, its name on the other."""
    province, city, county, road, num, names = rng.choice(LANDMARKS)
    units = [u for u in admin.units_by_city().get(city, ()) if u.county == county]
    if not units:
        return e1_admin(rng)
    area = random_area(rng, units[0])
    num_int = int("".join(c for c in num if c.isdigit()))
    road_full = road + ("甲" if "甲" in num else "")
    address = Spot(area=area, road=road_full.replace("甲甲", "甲"), num=num_int)
    name = Spot(area=area, name=names, kind="landmark")
    if rng.random() < 0.3:
        name = replace(name, gate=pl.gate(rng, "landmark"))
    sa = replace(registry_style(rng), start=rng.choice((1, 2, 3)))
    sb = replace(map_style(rng), alias=rng.random() < 0.4)
    return Pair(address, name, sa, sb, "exact_match", "E7", anchored=False)


# ---------------------------------------------------------------------------------------------
# partial_match: one side contains the other, or both are parts of one building


def p1_road(rng: random.Random) -> Pair:
    """P1: a road without a number, and a place on it (a number, a site, a crossing)."""
    site = _site(rng)
    road = Spot(area=site.area, road=site.road, kind="road")
    r = rng.random()
    if r < 0.2:
        inside = replace(site, name=(), kind="door")
    elif r < 0.35:
        inside = replace(site, num=None, cross=pl.road_name(rng, site.area),
                         corner=pl.corner(rng) if rng.random() < 0.6 else None,
                         name=site.name if rng.random() < 0.4 else ())
    else:
        inside = site
        if site.kind in ("compound", "park") and rng.random() < 0.4:
            inside = _with_part(rng, inside)
        elif site.kind in ("tower", "mall") and rng.random() < 0.3:
            inside = replace(inside, floor=rng.randint(1, 30))
        if site.named and rng.random() < 0.2:
            inside = replace(inside, num=None)
    if inside.road is None:
        return p1_road(rng)
    sa, sb = _styles(rng)
    return Pair(road, inside, sa, _full(sb), "partial_match", "P1")


def p2_complex(rng: random.Random) -> Pair:
    """P2: a complex (compound, park, mall, market, centre) and a part of it."""
    site = _site(rng, ("compound", "compound", "park", "park", "mall", "mall", "market",
                       "tower", "scenic"))
    kind = site.kind
    r = rng.random()
    if kind == "scenic":  # 西湖风景区 vs 西湖风景区断桥
        inside = replace(site, inner=pl.scenic_spot(rng) if r < 0.8 else pl.facility(rng, kind))
    elif kind == "market" and r < 0.7:
        inside = replace(site, inner=pl.stall(rng))
        if rng.random() < 0.3:
            inside = _with_part(rng, inside)
    elif kind == "mall" and r < 0.65:
        inside = replace(site, inner=pl.shop(rng), floor=rng.choice((-1, 1, 1, 2, 3, 4, 5))
                         if rng.random() < 0.6 else None)
        if rng.random() < 0.15:  # 天一广场星巴克(中山东路店)
            inside = replace(inside, branch=pl.short_name(site.road or "") or site.name[-1])
    elif kind == "compound" and r < 0.15:
        inside = replace(site, inner=Inner((rng.choice(("菜鸟驿站", "物业服务中心", "物业",
                                                         "幼儿园", "快递柜", "便利店")),),
                                           "service"))
    elif kind == "park" and r < 0.15:
        inside = replace(site, inner=pl.facility(rng, "park"))
    else:
        if kind == "tower":
            site = replace(site, name=(site.name[0].replace("大厦", "中心"),))
        inside = _with_part(rng, site)
        x = rng.random()
        if kind == "compound" and inside.part.mark == "栋" and x < 0.5:
            inside = replace(inside, unit_no=rng.randint(1, 6) if rng.random() < 0.7 else None,
                             room=pl.room_number(rng, 30))
        elif kind in ("park", "tower", "mall") and x < 0.5:
            if rng.random() < 0.5:
                inside = replace(inside, room=pl.room_number(rng))
            else:
                inside = replace(inside, floor=rng.randint(1, 30))
            if rng.random() < 0.3:
                inside = replace(inside, inner=pl.company(rng, site.area))
    sa, sb = _styles(rng)
    return Pair(site, inside, sa, sb, "partial_match", "P2")


def p3_same_building(rng: random.Random) -> Pair:
    """P3: two different tenants, floors, rooms or homes of one building."""
    base = _site(rng, ("tower", "tower", "compound", "park", "mall", "door", "agency"))
    kind = base.kind
    if kind in ("compound", "park"):
        base = replace(base, part=pl.new_part(rng, base))
    if kind == "compound":
        a = replace(base, unit_no=rng.randint(1, 6), room=pl.room_number(rng, 30))
        b = replace(base, unit_no=rng.randint(1, 6), room=pl.room_number(rng, 30))
        if a.unit_no == b.unit_no and a.room == b.room:
            b = replace(b, room=b.room + 1)
    elif kind == "mall":
        a = replace(base, inner=pl.shop(rng), floor=rng.randint(-1, 6))
        b = replace(base, inner=pl.shop(rng), floor=rng.randint(-1, 6))
    elif kind == "agency":
        other = pl.agency_forms(rng, base.area)
        if other[0] == base.name[0]:
            return p3_same_building(rng)
        a, b = base, replace(base, name=other)
    elif kind == "door":
        if rng.random() < 0.4:  # 文枢东路2号商住楼4楼 vs 文枢东路2号书店 (MGeo's example)
            a = replace(base, inner=pl.building_type(rng),
                        floor=rng.randint(2, 12) if rng.random() < 0.7 else None)
        else:
            a = replace(base, inner=pl.company(rng, base.area))
        b = replace(base, inner=pl.shop(rng) if rng.random() < 0.6
                    else pl.bank(rng, pl.stem(rng)))
    else:
        r = rng.random()
        if r < 0.35:
            a = replace(base, room=pl.room_number(rng))
            b = replace(base, room=pl.room_number(rng))
        elif r < 0.55:  # one floor vs a tenant on another floor: 23F vs 1楼中国银行
            a = replace(base, floor=rng.randint(2, 30))
            b = replace(base, floor=1 if rng.random() < 0.7 else rng.randint(-1, 3),
                        inner=pl.shop(rng) if rng.random() < 0.5 else pl.bank(rng, pl.stem(rng)))
            if a.floor == b.floor:
                a = replace(a, floor=a.floor + 1)
        else:
            a = replace(base, floor=rng.randint(2, 30), inner=pl.company(rng, base.area))
            b = replace(base, floor=rng.randint(1, 3),
                        inner=pl.shop(rng) if rng.random() < 0.5 else pl.bank(rng, pl.stem(rng)))
        if rng.random() < 0.3 and a.room:
            a = replace(a, inner=pl.company(rng, base.area))
    if a == b:
        return p3_same_building(rng)
    sa, sb = _styles(rng)
    return Pair(a, b, sa, sb, "partial_match", "P3")


def p4_area(rng: random.Random) -> Pair:
    """P4: a township, district, zone or village, and a place inside it."""
    r = rng.random()
    if r < 0.3:  # a village and a group, household or committee of it
        village = pl.new_village(rng, random_area(rng))
        x = rng.random()
        if x < 0.4:
            inside = replace(village, group=rng.randint(1, 15),
                             num=rng.randint(1, 120) if rng.random() < 0.5 else None)
        elif x < 0.7:
            inside = replace(village, inner=Inner((rng.choice(("村委会", "村民委员会", "居委会",
                                                                "村卫生室", "小学")),),
                                                  "service"))
        else:
            inside = replace(village, num=rng.randint(1, 200))
        sa, sb = _styles(rng)
        return Pair(village, inside, _must(sa, 3), _must(sb, 3), "partial_match", "P4")
    site = _site(rng)
    x = rng.random()
    if x < 0.25:  # 大瑶镇 vs 大瑶镇花炮大道: a road of the township
        site = pl.new_road_spot(rng, site.area)
    elif x < 0.35 and r < 0.75:  # 陈埭镇 vs 陈埭镇岸兜村: a village of the township
        site = pl.new_village(rng, site.area)
    elif site.kind in ("compound", "park") and x < 0.6:
        site = _with_part(rng, site)
    area = Spot(area=site.area, kind="area")
    sa, sb = _styles(rng)
    if r < 0.75:  # a township (镇, 街道)
        sa, sb = _must(sa, 3, 4), _must(sb, 4)
    elif r < 0.9:  # a county or district
        sa, sb = replace(_must(sa, 3), town=False), _must(sb, 3)
    else:  # an overlay zone (开发区, 新区) and a place in it
        area = replace(area, name=(admin.overlay_zones(site.area.unit)[0],), kind="zone")
        sa = replace(sa, start=min(sa.start, 2) if rng.random() < 0.5 else 5)
        sb = replace(sb, overlay=True)
    return Pair(area, site, sa, _full(sb), "partial_match", "P4")


def p5_facility(rng: random.Random) -> Pair:
    """P5: a hospital, campus, station, hotel or agency, and a facility in it."""
    site = _site(rng, ("hospital", "hospital", "campus", "campus", "station", "hotel", "school",
                       "agency", "park"))
    inside = replace(site, inner=pl.facility(rng, site.kind))
    sa, sb = _styles(rng)
    return Pair(site, inside, sa, sb, "partial_match", "P5")


# ---------------------------------------------------------------------------------------------
# not_match: different places


def n1_number(rng: random.Random) -> Pair:
    """N1: the same road, another number: near misses (68/86, 166/16) and far ones."""
    a = _on_road(rng, _site(rng))
    num = pl.near_number(rng, a.num) if rng.random() < 0.6 else pl.far_number(rng, a.num)
    b = pl.new_site(rng, a.area)
    b = replace(b, road=a.road, num=num)
    if rng.random() < 0.5:
        b = replace(b, name=(), kind="door", branch=None)
    sa, sb = _styles(rng)
    return Pair(a, b, _full(sa), _full(sb), "not_match", "N1")


def _moved(spot: Spot, area: Area) -> Spot:
    """The same kind of site with the same name in another area (names that carry their
    city or county are rewritten: 长沙市第一中学 -> 湘潭市第一中学)."""
    old_u, new_u = spot.area.unit, area.unit
    pairs = [(old_u.county, new_u.county), (old_u.city_name, new_u.city_name)]
    pairs += [(short_name(o), short_name(n)) for o, n in pairs if o and n]
    names = []
    for form in spot.name:
        for o, n in pairs:
            if o and n and o in form:
                form = form.replace(o, n)
                break
        names.append(form)
    return replace(spot, area=area, name=tuple(names))


def n2_elsewhere(rng: random.Random) -> Pair:
    """N2: the same name elsewhere: another city, county or town; another campus, 院区 or
    branch."""
    r = rng.random()
    if r < 0.2:  # a village of the same name in another county or town
        a = pl.new_village(rng, random_area(rng))
        if rng.random() < 0.5:
            a = replace(a, group=rng.randint(1, 15))
        other = admin.other_county(rng, a.area, same_city=rng.random() < 0.6) \
            or admin.other_county(rng, a.area, same_city=False)
        b = replace(a, area=other)
        sa, sb = _styles(rng)
        return Pair(a, b, _must(sa, 3, 4), _must(sb, 3, 4), "not_match", "N2")
    if r < 0.4:  # another campus, 院区 or branch of one institution in the same city
        kind = rng.choice(("campus", "hospital", "shop", "shop"))
        a = _site(rng, (kind,))
        b = pl.new_site(rng, a.area, kind)
        if kind == "campus":
            forms, _ = pl.campus_forms(rng, a.area)
            one, two = rng.sample(("东校区", "西校区", "南校区", "北校区", "主校区",
                                   pl.stem(rng) + "校区", pl.stem(rng) + "校区"), 2)
            a, b = replace(a, name=(forms[0] + one,)), replace(b, name=(forms[0] + two,))
        elif kind == "hospital":
            other = rng.choice(("东院", "西院", "南院", "北院", pl.stem(rng) + "院区", "新院区",
                                "分院", "东院区", "南院区"))
            b = replace(b, name=(a.name[0] + other,))
            if rng.random() < 0.3:  # 北京协和医院西院 vs 北京协和医院东院
                a = replace(a, name=(a.name[0] + rng.choice(("本部", "老院区", "总院")),))
        else:
            brand = rng.choice(pl.SHOP_BRANDS)
            a = replace(a, name=brand, branch=pl.stem(rng) + rng.choice(("", "广场", "路")))
            b = replace(b, name=brand, branch=pl.stem(rng) + rng.choice(("", "广场", "路")))
            if b.branch == a.branch:
                b = replace(b, branch=b.branch + "二")
        sa, sb = _styles(rng)
        return Pair(a, b, sa, sb, "not_match", "N2")
    a = _site(rng, ("compound", "compound", "mall", "school", "agency", "hospital", "market",
                    "park", "shop", "station", "hotel"))
    if a.kind == "compound" and rng.random() < 0.3:
        a = _with_part(rng, a)
    same_city = rng.random() < 0.45
    other = admin.other_county(rng, a.area, same_city=same_city)
    if other is None:
        same_city, other = False, admin.other_county(rng, a.area, same_city=False)
    b = _moved(a, other)
    b = replace(b, road=pl.road_name(rng, other) if rng.random() < 0.7 else b.road,
                num=pl.house_number(rng) if b.num is not None else None)
    level = 3 if same_city else 2
    sa, sb = _styles(rng)
    return Pair(a, b, _must(sa, level), _must(sb, level), "not_match", "N2")


def n3_neighbour(rng: random.Random) -> Pair:
    """N3: a neighbour: another building of one complex, an adjacent number, or a place
    described as next to / opposite / 60 m from the other."""
    r = rng.random()
    if r < 0.5:
        site = _site(rng, ("compound", "compound", "park", "park", "mall", "tower"))
        if site.kind == "tower":
            site = replace(site, name=(site.name[0].replace("大厦", "国际中心"),))
        a = _with_part(rng, site)
        b = replace(a, part=pl.sibling_part(rng, a.part))
        if a.kind == "compound" and a.part.mark == "栋" and rng.random() < 0.5:
            a = replace(a, unit_no=rng.randint(1, 6), room=pl.room_number(rng, 30))
            if rng.random() < 0.4:
                b = replace(b, unit_no=a.unit_no, room=a.room)
        elif rng.random() < 0.3:
            a = replace(a, room=pl.room_number(rng))
        sa, sb = _styles(rng)
        return Pair(a, b, sa, sb, "not_match", "N3")
    if r < 0.7:  # the next door
        a = _on_road(rng, _site(rng))
        b = replace(pl.new_site(rng, a.area), road=a.road,
                    num=max(1, a.num + rng.choice((-2, -1, 1, 2, 2))))
        if b.num == a.num:
            b = replace(b, num=a.num + 2)
        if rng.random() < 0.5:
            b = replace(b, name=(), kind="door", branch=None)
        sa, sb = _styles(rng)
        return Pair(a, b, _full(sa), _full(sb), "not_match", "N3")
    # something beside, opposite or some metres from a landmark vs the landmark itself
    landmark = _site(rng, ("hotel", "campus", "hospital", "station", "mall", "agency", "park",
                           "shop", "tower"))
    x = rng.random()
    if x < 0.3 and landmark.kind in GATE_KINDS:
        rel = pl.gate(rng, landmark.kind) + rng.choice(("外", "外", "对面", "旁"))
    else:
        rel = pl.relative_note(rng)
    thing = rng.choice(("", pl.shop(rng).forms[0], pl.bank(rng, pl.stem(rng)).forms[0],
                        rng.choice(("停车场", "商业街", "公交站", "地铁站", "小吃街", "药店"))))
    beside = Spot(area=landmark.area, road=landmark.road if rng.random() < 0.6 else None,
                  name=(landmark.name[0] + rel + thing,), kind="relative")
    sa, sb = _styles(rng)
    return Pair(beside, landmark, sa, sb, "not_match", "N3")


def _lookalike_name(rng: random.Random, name: str) -> str:
    """A name one step away: 兰花小区 -> 乌兰小区, 湘雅医院 -> 湘雅二医院, 金色家园 -> 金色港湾."""
    for i, c in enumerate(name):
        if c in "东西南北" and rng.random() < 0.7:
            return name[:i] + rng.choice([d for d in "东西南北" if d != c]) + name[i + 1:]
    r = rng.random()
    head, tail = name[:2], name[2:]
    if r < 0.35:
        i = rng.randrange(2)
        new = list(head)
        new[i] = rng.choice(pl._C1 if i == 0 else pl._C2)
        out = "".join(new) + tail
    elif r < 0.6:
        out = head + rng.choice("二三四五东西南北新") + tail
    elif r < 0.8:
        out = rng.choice(pl._C1) + head[1] + tail if len(name) > 3 else rng.choice(pl._C1) + name
    else:
        out = head + rng.choice(("家园", "花园", "港湾", "新村", "广场", "中心", "医院", "大厦"))
    return out if out != name else name + "二期"


def n4_lookalike(rng: random.Random) -> Pair:
    """N4: look-alike names: 胜利南路/胜利北路, 建设二路/建设三路, 兰花小区/乌兰小区."""
    a = _on_road(rng, _site(rng))
    owner = (a.area.unit.city_name, a.area.unit.county or "-", short_name(a.area.unit.city_name))
    if rng.random() < 0.7 or not a.named or a.name[0].startswith(owner):
        b = replace(pl.new_site(rng, a.area), road=pl.lookalike_road(rng, a.road), num=a.num)
        if rng.random() < 0.6:
            b = replace(b, name=(), kind="door", branch=None)
        if rng.random() < 0.3:
            other = admin.other_county(rng, a.area, same_city=True)
            if other is not None:
                b = replace(b, area=other)
        if rng.random() < 0.4:
            a = replace(a, name=(), kind="door", branch=None)
        if rng.random() < 0.25:  # two roads without numbers: 中华北大街 vs 中华南大街
            a = Spot(area=a.area, road=a.road, kind="road")
            b = Spot(area=b.area, road=b.road, kind="road")
        sa, sb = _full(any_style(rng)), _full(any_style(rng))
    else:  # another site whose name reads almost the same, somewhere else
        b = replace(pl.new_site(rng, a.area, a.kind), name=(_lookalike_name(rng, a.name[0]),),
                    branch=None)
        if a.kind in ("compound", "park") and rng.random() < 0.5:
            a = _with_part(rng, a)
            b = replace(b, part=a.part)
        sa, sb = any_style(rng), any_style(rng)
        return Pair(a, b, sa, sb, "not_match", "N4", anchored=False)
    return Pair(a, b, sa, sb, "not_match", "N4")


def n5_other_district(rng: random.Random) -> Pair:
    """N5: the same road and number under another district or city."""
    a = _on_road(rng, _site(rng))
    same_city = rng.random() < 0.6
    other = admin.other_county(rng, a.area, same_city=same_city)
    if other is None:
        same_city, other = False, admin.other_county(rng, a.area, same_city=False)
    b = replace(pl.new_site(rng, other), road=a.road, num=a.num)
    if rng.random() < 0.6:
        b = replace(b, name=(), kind="door", branch=None)
    if rng.random() < 0.2:  # one road name in two districts: 相城区御窑路 vs 吴江区御窑路
        a = Spot(area=a.area, road=a.road, kind="road")
        b = Spot(area=b.area, road=b.road, kind="road")
    level = 3 if same_city else 2
    sa, sb = _styles(rng)
    return Pair(a, b, _full(_must(sa, level)), _full(_must(sb, level)), "not_match", "N5")


def n6_unrelated(rng: random.Random) -> Pair:
    """N6: the same district (often the same township), another road or another site; two
    townships of one district."""
    a = _site(rng)
    r = rng.random()
    if r < 0.12:  # 路桥街道 vs 路北街道
        other = admin.other_town(rng, a.area)
        if other is not None:
            sa, sb = _styles(rng)
            return Pair(Spot(area=a.area, kind="area"), Spot(area=other, kind="area"),
                        _must(sa, 3, 4), _must(sb, 3, 4), "not_match", "N6")
    area = a.area if rng.random() < 0.6 else (admin.other_town(rng, a.area) or a.area)
    b = pl.new_site(rng, area)
    if r > 0.85:  # two roads of one district: 长江西路二段 vs 黄河西路二段
        a = Spot(area=a.area, road=a.road or pl.road_name(rng, a.area), kind="road")
        b = Spot(area=area, road=pl.road_name(rng, area), kind="road")
        sa, sb = _styles(rng)
        return Pair(a, b, sa, sb, "not_match", "N6")
    if rng.random() < 0.2 and a.named and b.named and a.road:  # two sites of one road
        a, b = replace(a, num=None), replace(b, road=a.road, num=None)
    if b.road == a.road and b.num == a.num:
        b = replace(b, road=pl.road_name(rng, area))
    sa, sb = _styles(rng)
    return Pair(a, b, sa, sb, "not_match", "N6")


def n0_random(rng: random.Random) -> Pair:
    """N0: two random places anywhere."""
    a, b = _site(rng), _site(rng)
    sa, sb = _styles(rng)
    return Pair(a, b, sa, sb, "not_match", "N0")


# Recipes per label, with their shares inside the label (LABELLING.md section 5.2).
RECIPES = {
    "exact_match": ((e4_extra, 25), (e5_attribute, 25), (e6_locating, 10), (e3_alias, 10),
                    (e2_surface, 15), (e1_admin, 10), (e7_landmark, 5)),
    "partial_match": ((p1_road, 30), (p2_complex, 30), (p3_same_building, 15), (p4_area, 15),
                      (p5_facility, 10)),
    "not_match": ((n1_number, 22), (n2_elsewhere, 20), (n3_neighbour, 20), (n4_lookalike, 15),
                  (n5_other_district, 10), (n6_unrelated, 8), (n0_random, 5)),
}


def draw(rng: random.Random, label: str) -> Pair:
    """One pair of `label`, its recipe drawn by share."""
    recipes = RECIPES[label]
    recipe = rng.choices([r for r, _ in recipes], [w for _, w in recipes])[0]
    pair = recipe(rng)
    a, b = pair.a, pair.b
    sa, sb = pair.sa, pair.sb
    # A side that names its site may drop the road and number only when the other side
    # names the same site: otherwise nothing would tie the two together.
    if pair.anchored and not (a.named and b.named and a.name[0] == b.name[0]):
        sa, sb = _full(sa), _full(sb)
    if pair.tag in ("N2", "N5"):  # the difference is in the prefix: write it plainly
        sa, sb = (replace(s, typo=False, overlay=False, old_names=False) for s in (sa, sb))
    else:
        sa, sb = (replace(s, old_names=s.old_names or rng.random() < 0.05,
                          overlay=s.overlay or rng.random() < 0.04) for s in (sa, sb))
        if pair.label == "not_match":
            sa, sb = replace(sa, typo=False), replace(sb, typo=False)
        elif rng.random() < 0.04:
            sb = replace(sb, typo=True)
    return replace(pair, sa=sa, sb=sb)
