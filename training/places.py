"""The places the pair generator talks about, independent of how they are written.

A `Spot` is what one side of a pair points at: an area (county and township), then optionally a
road and house number, a village, a named site standing at the number (an office tower, a
compound, a park, a mall, a campus, a hospital, a market, a station, an agency, a shop), a part
of that site (a building, a block), attributes (unit, room, floor, gate) and an `Inner` place
inside (a tenant company, a shop, a stall, a facility). It may also carry text that is not an
address at all: a person, a delivery note, a locating note.

`training/recipes.py` derives pairs of spots (the same place, a container and a place inside,
two different places) and `training/writers.py` writes each spot as text. Names are templated
from stems; none is meant to be a real business.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from functools import lru_cache

from mgeo.training import admin
from mgeo.training.admin import Area, short_name, town_short

# ---------------------------------------------------------------------------------------------
# Stems

_C1 = ("文 紫 金 银 新 华 民 建 光 明 长 永 和 平 安 康 福 兴 盛 青 江 湖 海 山 云 春 秋 凤 龙 天 学 "
       "科 工 商 丰 泰 瑞 宏 嘉 庆 荣 德 仁 益 育 星 阳 桂 梅 兰 竹 松 柳 桃 清 滨 河 湾 港 翠 锦 玉 "
       "宝 富 振 胜 利 友 复 秀 丽 景 望 朝 晨 东 西 南 北 中 环 府 通 航 信 体 虹 枫 樱 梧 桐 茂 "
       "昌 隆 鸿 鹏 飞 腾 钱 湘 汉 粤 闽 浙 苏 皖 蜀 黄 白 红 绿 莲 荷 菊 芙 蓉 杏 槐 榆 柏 樟 "
       "凌 霞 虎 鹤 雁 鹿 石 岭 峰 泉 溪 潭 洲 塘 堤 桥 仙 圣 宁 静 悦 乐 欣 怡 雅 逸 尚 博 卓 "
       "恒 伟 国 家 世 纪 时 代 未 来 万 千 百 三 五 九 鼎 汇 润 辰 川 骏 旺 顺 达 远 航 裕 晟").split()
_C2 = ("华 明 兴 安 康 宁 平 和 阳 山 江 河 湖 海 源 泉 林 园 苑 庭 府 城 溪 湾 桥 门 岗 台 坊 "
       "街 里 村 屯 营 庄 口 滩 浦 港 州 岭 峰 塘 田 光 辉 荣 昌 盛 丰 泰 祥 瑞 福 寿 喜 乐 "
       "德 仁 义 礼 智 信 文 武 新 春 秋 霞 云 星 月 晖 旭 晨 枢 萱 翠 锦 绣 秀 美 丽 雅 逸 悦 "
       "欣 怡 景 洲 渚 汀 沙 石 竹 松 柏 梅 兰 桂 枫 柳 杨 槐 樟 桐 茶 莲 荷 菊 凤 龙 虎 鹤 达 通 "
       "鼎 顺 润 远 腾 飞 航 业 邦 发 隆 利 豪 嘉 晟 汇 聚 诚 信 合 众").split()
_ROAD_FAMOUS = ("人民 解放 中山 建设 文化 和平 胜利 新华 长江 黄河 体育 学府 科技 工业 滨江 东风 "
                "青年 友谊 团结 幸福 光明 健康 迎宾 世纪 南京 北京 上海 延安 长安 花园 公园 车站 "
                "机场 高新 开发 创业 振兴 繁荣 复兴 劳动 红旗 朝阳 湖滨 江南 河西 学院 大学 "
                "金融 商业 环城 沿江 滨海 龙华 凤凰 五一 八一 三八 建国 民主 东方 北环 南环 "
                "解放碑 新民 前进 工农 平安 广场 站前 太行 燕山 天山 昆仑 珠江 黄山 泰山").split()
_DIRS = ("东", "西", "南", "北", "中")
_ROAD_SUFFIX = (("路", 10), ("街", 3), ("大道", 2), ("大街", 1.5), ("巷", 0.7), ("道", 0.6),
                ("步行街", 0.3), ("弄", 0.2), ("胡同", 0.2))
_CN_ORD = "一二三四五六七八九十"

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程苏魏吕丁任沈姚卢"


def stem(rng: random.Random) -> str:
    """A two-character name stem: 紫萱, 华泰, 锦绣; a third of them taken from real township
    names, so that names use the characters real place names use."""
    if rng.random() < 0.3:
        return rng.choice(_town_stems())
    return rng.choice(_C1) + rng.choice(_C2)


@lru_cache(maxsize=1)
def _town_stems() -> tuple[str, ...]:
    """Two-character stems of the townships in the division data (砖桥 of 砖桥镇)."""
    out = set()
    for unit in admin.divisions()[0]:
        for town in unit.towns:
            short = town_short(town)
            if len(short) == 2 and not any(c in short for c in "0123456789"):
                out.add(short)
    return tuple(sorted(out))


# ---------------------------------------------------------------------------------------------
# The place model


@dataclass(frozen=True)
class Part:
    """A building or block of a complex: label 3 and mark 栋 (3栋, 3幢, 3号楼, 3#), A 座, E 区."""

    label: str
    mark: str  # 栋: numbered buildings; 座: lettered towers; 区: blocks; 馆: halls of a mall


@dataclass(frozen=True)
class Inner:
    """A place inside a site: a tenant company, a shop, a stall, an agency or a facility.
    `forms` holds its ways of writing, the canonical one first."""

    forms: tuple[str, ...]
    kind: str  # company, shop, stall, agency, facility, service


@dataclass(frozen=True)
class Spot:
    """What one side of a pair points at (see the module docstring)."""

    area: Area
    road: str | None = None
    num: int | None = None
    cross: str | None = None        # a crossing road: 「road与cross交叉口」
    corner: str | None = None       # 东北角 of that crossing
    village: str | None = None
    group: int | None = None        # 村民小组
    name: tuple[str, ...] = ()      # the named site, canonical form first, then aliases
    kind: str = "door"              # door (an unnamed number), tower, compound, park, mall,
    #                                 campus, hospital, market, station, agency, school, hotel,
    #                                 shop, landmark
    branch: str | None = None       # 「(农业路店)」 of a chain store
    part: Part | None = None
    unit_no: int | None = None
    room: int | None = None
    floor: int | None = None
    inner: Inner | None = None
    gate: str | None = None
    extra: str | None = None        # a person or a delivery note: not address information
    note: str | None = None         # a locating note: 「工商银行东北60米」, 「火车站对面」

    @property
    def named(self) -> bool:
        return bool(self.name)


# ---------------------------------------------------------------------------------------------
# Roads and numbers


def road_name(rng: random.Random, area: Area) -> str:
    r = rng.random()
    if r < 0.3:
        base = rng.choice(_ROAD_FAMOUS)
    elif r < 0.38:
        local = short_name(area.unit.leaf)
        base = local if 2 <= len(local) <= 3 else stem(rng)
    else:
        base = stem(rng)
    suffix = rng.choices([s for s, _ in _ROAD_SUFFIX], [w for _, w in _ROAD_SUFFIX])[0]
    if suffix in ("路", "街", "大道", "大街") and rng.random() < 0.3:
        base += rng.choice(_DIRS)
    elif suffix == "路" and rng.random() < 0.06:
        base += rng.choice(_CN_ORD[:9])
    road = base + suffix
    if suffix in ("路", "大道") and rng.random() < 0.03:
        road += rng.choice(_CN_ORD[:4]) + "段"
    return road


def house_number(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.4:
        return rng.randint(1, 60)
    if r < 0.75:
        return rng.randint(61, 300)
    if r < 0.93:
        return rng.randint(301, 999)
    return rng.randint(1000, 3999)


def lookalike_road(rng: random.Random, road: str) -> str:
    """Another road that reads almost the same (rule N4): 胜利南路/胜利北路, 胜利路/胜利南路,
    建设二路/建设三路, 人民南路四段/人民南路三段."""
    for suf in ("大道", "大街", "路", "街"):
        if road.endswith(suf) and not road.endswith("步行街"):
            base = road[: -len(suf)]
            break
    else:
        return road[:-1] + ("路" if road[-1] != "路" else "街")
    if road.endswith("段"):
        head, seg = road[:-2], road[-2]
        return head + rng.choice([c for c in _CN_ORD[:4] if c != seg]) + "段"
    if base and base[-1] in _DIRS:
        if rng.random() < 0.25:
            return base[:-1] + suf
        return base[:-1] + rng.choice([d for d in _DIRS if d != base[-1]]) + suf
    if base and base[-1] in _CN_ORD:
        return base[:-1] + rng.choice([c for c in _CN_ORD[:9] if c != base[-1]]) + suf
    if rng.random() < 0.15 and suf in ("路", "街"):
        return base + ("大街" if suf == "街" else "大道")
    return base + rng.choice(_DIRS) + suf


def near_number(rng: random.Random, n: int) -> int:
    """A house number easy to confuse with `n` (rule N1): digits swapped (68/86), one digit
    dropped or added (166/16, 89/189), one digit changed (888/188), or 1-2 apart."""
    s = str(n)
    for _ in range(10):
        r = rng.random()
        if r < 0.3 and len(s) >= 2:
            i = rng.randrange(len(s) - 1)
            t = s[:i] + s[i + 1] + s[i] + s[i + 2:]
        elif r < 0.45 and len(s) >= 2:
            i = rng.randrange(len(s))
            t = s[:i] + s[i + 1:]
        elif r < 0.6:
            i = rng.randrange(len(s) + 1)
            t = s[:i] + str(rng.randint(1, 9)) + s[i:]
        elif r < 0.8:
            i = rng.randrange(len(s))
            t = s[:i] + str(rng.randint(0, 9)) + s[i + 1:]
        else:
            t = str(n + rng.choice((-2, -1, 1, 2)))
        if t and t[0] != "0" and int(t) != n and int(t) > 0:
            return int(t)
    return n + 2


def far_number(rng: random.Random, n: int) -> int:
    while True:
        m = house_number(rng)
        if abs(m - n) >= max(20, n // 3):
            return m


# ---------------------------------------------------------------------------------------------
# Named sites

_TOWER = ("大厦 大厦 大厦 商厦 大楼 写字楼 商务楼 国际大厦 国际中心 中心 商务中心 金融中心 "
          "科技大厦 综合楼 商业大厦 国际广场").split()
_COMPOUND = ("花园 小区 家园 苑 公寓 新村 名苑 华庭 雅苑 嘉园 新城 府 国际 公馆 佳苑 名邸 花苑 "
             "山庄 丽景 城 里 小区 小区 花园 家园 家属院 宿舍 新都市 港湾").split()
_DEVELOPERS = "万科 碧桂园 保利 绿城 恒大 中海 龙湖 融创 金地 华润 招商 世茂 阳光 金科 龙湖".split()
_PARK = "科技园 产业园 软件园 工业园 创业园 创意产业园 孵化园 科技城 产业基地 电商园 物流园".split()
_MALL_BRANDS = ("万达广场 万象城 吾悦广场 银泰城 大悦城 龙湖天街 印象城 宝龙广场 凯德广场 "
                "苏宁广场 爱琴海购物公园 华润万象汇 新世界百货 百盛购物中心 万达茂").split()
_MALL = "购物中心 商场 百货大楼 广场 天地 商业广场 购物广场 百货 商城".split()
_MARKET = ("农贸市场 菜市场 批发市场 小商品市场 建材市场 家具城 海鲜市场 服装城 商贸城 "
           "国际商贸城 汽配城 花鸟市场").split()
_HOTEL = "大酒店 酒店 宾馆 商务酒店 度假酒店 饭店 假日酒店".split()
_SCENIC = "风景区 景区 风景名胜区 公园 森林公园 湿地公园 古镇 生态园 植物园 古城".split()
_SCENIC_SPOTS = "亭 桥 寺 塔 阁 广场 湖 码头 书院 牌坊 古街 长廊 观景台 游客中心".split()
_CAMPUS_KIND = (("大学", "大"), ("师范大学", "师大"), ("理工大学", "理工"), ("科技大学", "科大"),
                ("医科大学", "医大"), ("财经大学", "财大"), ("职业技术学院", "职院"),
                ("师范学院", "师院"), ("学院", "院"))
SHOP_BRANDS = (("肯德基", "KFC"), ("麦当劳",), ("星巴克", "星巴克咖啡"), ("瑞幸咖啡", "luckin"),
                ("必胜客",), ("海底捞火锅", "海底捞"), ("华莱士",), ("永和大王",), ("喜茶",),
                ("蜜雪冰城",), ("名创优品",), ("屈臣氏",), ("优衣库", "UNIQLO"), ("周大福",),
                ("老凤祥",), ("全家便利店", "全家"), ("罗森便利店", "罗森"), ("美宜佳",),
                ("沃尔玛", "沃尔玛超市"), ("永辉超市", "永辉"), ("大润发",), ("华润万家",),
                ("苏宁易购",), ("国美电器", "国美"), ("中国移动营业厅", "移动营业厅"),
                ("中国联通营业厅", "联通营业厅"), ("中国电信营业厅", "电信营业厅"),
                ("老百姓大药房",), ("益丰大药房",), ("一点点",), ("绝味鸭脖",), ("正新鸡排",),
                ("德克士",), ("汉堡王",), ("西西弗书店",), ("万达影城",), ("小米之家",),
                ("华为授权体验店", "华为体验店"), ("苹果授权店",))
_BANKS = (("中国工商银行", "工商银行", "工行"), ("中国建设银行", "建设银行", "建行"),
          ("中国农业银行", "农业银行", "农行"), ("中国银行", "中行"),
          ("交通银行", "交行"), ("招商银行", "招行"), ("中国邮政储蓄银行", "邮储银行"),
          ("兴业银行",), ("浦发银行",), ("中信银行",), ("农村商业银行", "农商行"))
_LOCAL_SHOPS = ("{s}超市 {s}大药房 {s}便利店 {s}五金店 {s}家电 {s}快餐 {s}面馆 {s}小吃 "
                "{s}烟酒店 {s}水果店 {s}眼镜店 {s}茶庄 {s}汽修 {s}理发店 {s}洗衣店 {s}诊所 "
                "{s}口腔门诊 {s}幼儿园 {s}培训中心 {s}琴行 老{n}家{f} {n}记{f}").split()
_FOODS = "面馆 豆腐串 烧烤 米线 饺子馆 包子铺 粥铺 火锅 麻辣烫 牛肉面 烤鸭".split()
# Agencies: (forms, level) with forms canonical first; the city or county name is prefixed.
_AGENCIES = (
    (("人力资源和社会保障局", "人力社保局", "人社局"), "any"),
    (("市场监督管理局", "市场监管局"), "any"),
    (("住房和城乡建设局", "住建局"), "any"),
    (("自然资源和规划局", "自然资源局", "资规局"), "any"),
    (("交通运输局", "交通局"), "any"),
    (("医疗保障局", "医保局"), "any"),
    (("生态环境局", "环保局"), "any"),
    (("教育局",), "any"),
    (("公安局",), "any"),
    (("税务局",), "any"),
    (("民政局",), "any"),
    (("财政局",), "any"),
    (("人民政府", "政府"), "any"),
    (("人民法院", "法院"), "any"),
    (("人民检察院", "检察院"), "any"),
    (("不动产登记中心", "不动产中心"), "any"),
    (("政务服务中心", "行政服务中心", "市民中心"), "any"),
    (("公积金管理中心", "公积金中心"), "city"),
    (("车辆管理所", "车管所"), "city"),
    (("出入境管理局", "出入境大厅"), "city"),
    (("疾病预防控制中心", "疾控中心"), "any"),
    (("图书馆",), "any"),
    (("博物馆",), "any"),
    (("档案馆",), "any"),
    (("体育中心", "体育馆"), "any"),
)
_HOSPITALS = ((("第一人民医院", "一院", "第一医院"), "city"),
              (("第二人民医院", "二院", "第二医院"), "city"),
              (("第三人民医院", "三院"), "city"),
              (("人民医院",), "any"),
              (("中医医院", "中医院"), "any"),
              (("妇幼保健院", "妇保院"), "any"),
              (("中心医院",), "city"),
              (("儿童医院",), "city"),
              (("肿瘤医院",), "city"),
              (("骨科医院",), "any"),
              (("口腔医院",), "city"))
_SCHOOLS = ((("第一中学", "一中"), "any"), (("第二中学", "二中"), "any"),
            (("第三中学", "三中"), "any"), (("实验中学",), "any"), (("实验小学", "实小"), "any"),
            (("第一小学", "一小"), "any"), (("外国语学校", "外国语"), "city"),
            (("职业中专", "职专"), "any"))
_STATIONS = ("站", "东站", "南站", "西站", "北站", "汽车站", "汽车客运站", "客运中心",
             "长途汽车站")

# What lies inside each kind of site: facilities (rule P5) and gates (rule E5).
FACILITIES = {
    "hospital": ("门诊楼", "住院部", "第一住院大楼", "急诊楼", "门急诊楼", "外科大楼", "内科楼",
                 "医技楼", "发热门诊", "体检中心", "住院大楼", "行政楼", "职工食堂"),
    "campus": ("图书馆", "主楼", "第一教学楼", "第三教学楼", "食堂", "第二食堂", "体育馆",
               "实验楼", "行政楼", "学生活动中心", "体育场", "校医院", "逸夫楼", "科技楼"),
    "school": ("教学楼", "食堂", "体育馆", "图书馆", "操场", "实验楼"),
    "station": ("售票厅", "候车室", "公交枢纽站", "出租车候车区", "地下停车场", "行李寄存处",
                "进站口", "到达层"),
    "hotel": ("国际会议中心", "中餐厅", "宴会厅", "会议中心", "停车场", "健身中心"),
    "park": ("员工食堂", "服务中心", "停车场", "党群服务中心", "会议中心"),
    "agency": ("办事大厅", "政务服务大厅", "信访接待室"),
    "landmark": ("游客中心", "售票处", "停车场"),
    "scenic": ("游客中心", "售票处", "停车场", "索道站"),
}
GATES = {
    "compound": ("东门", "西门", "南门", "北门", "正门", "1号门", "2号门", "北大门"),
    "mall": ("东门", "西门", "南门", "北门", "1号门", "2号门", "地下停车场入口"),
    "campus": ("东门", "西门", "南门", "北门", "正门", "东南门", "西北门"),
    "hospital": ("东门", "西门", "南门", "北门", "正门", "急诊入口"),
    "station": ("南广场", "北广场", "东广场", "西广场", "北出站口", "南出站口", "进站口",
                "2号口", "B出口"),
    "park": ("东门", "西门", "南门", "北门", "1号门"),
    "market": ("东门", "西门", "南门", "北门", "1号门"),
    "landmark": ("东门", "西门", "南门", "北门", "正门", "1号门"),
    "scenic": ("东门", "西门", "南门", "北门", "正门", "1号入口", "南大门"),
}
_NOTES = ("放菜鸟驿站", "放快递柜", "放门卫", "放前台", "送货上门", "电联", "前台", "放丰巢",
          "工作日送", "放门口", "收发室", "家里有人", "到了打电话", "放物业")
_DIRECTIONS = ("东", "西", "南", "北", "东北", "西北", "东南", "西南")
_CORNERS = ("东北角", "西北角", "东南角", "西南角")


def person(rng: random.Random) -> str:
    """A recipient: 王女士, 李先生, 张伟."""
    s = rng.choice(SURNAMES)
    if rng.random() < 0.6:
        return s + rng.choice(("女士", "先生", "先生", "小姐", "老师", "经理", "师傅"))
    return s + rng.choice(_C2) + (rng.choice(_C2) if rng.random() < 0.3 else "")


def extra(rng: random.Random) -> str:
    """Non-address text (rule E4): a person, a phone-style note or a delivery note."""
    r = rng.random()
    if r < 0.55:
        return person(rng)
    if r < 0.9:
        return rng.choice(_NOTES)
    return person(rng) + " " + rng.choice(_NOTES)


def company(rng: random.Random, area: Area) -> Inner:
    """A tenant company as the business registry writes it: 湖南恒达机电有限公司."""
    place = rng.choice((short_name(area.unit.city_name), short_name(area.unit.province), ""))
    if len(place) > 4:
        place = ""
    trade = rng.choice(("科技", "网络科技", "信息技术", "贸易", "商贸", "机电", "电子", "建筑工程",
                        "物流", "餐饮管理", "文化传媒", "医疗器械", "服饰", "食品", "电气",
                        "软件", "实业", "投资咨询", "教育咨询", "环保科技", "装饰工程",
                        "智能科技", "供应链管理", "广告", "物业管理", "人力资源"))
    kind = rng.choices(("有限公司", "有限责任公司", "股份有限公司", "工作室", "律师事务所",
                        "会计师事务所", "财务咨询有限公司"), (10, 2, 1, 0.5, 0.6, 0.5, 0.5))[0]
    name = place + stem(rng)
    full = name + (trade + kind if not kind.endswith("所") else kind)
    forms = (full, name + trade) if kind.endswith("公司") and rng.random() < 0.5 else (full,)
    return Inner(forms, "company")


def shop(rng: random.Random) -> Inner:
    """A shop: a chain brand, a local shop, or just what it sells (书店, 便利店)."""
    r = rng.random()
    if r < 0.12:
        return Inner((rng.choice(("书店", "便利店", "药店", "理发店", "快递站", "超市", "水果店",
                                  "早餐店", "五金店", "花店", "打印店")),), "shop")
    if r < 0.55:
        brand = rng.choice(SHOP_BRANDS)
        return Inner(brand, "shop")
    form = rng.choice(_LOCAL_SHOPS)
    return Inner((form.format(s=stem(rng), n=rng.choice(SURNAMES), f=rng.choice(_FOODS)),),
                 "shop")


def bank(rng: random.Random, branch: str) -> Inner:
    forms = rng.choice(_BANKS)
    return Inner(tuple(f + branch + "支行" for f in forms), "bank")


def stall(rng: random.Random) -> Inner:
    r = rng.random()
    if r < 0.35:
        text = f"{rng.choice('ABCDEF')}区{rng.randint(1, 120)}档"
    elif r < 0.65:
        text = f"{rng.randint(1, 60)}街{rng.randint(1000, 9999)}商位"
    elif r < 0.85:
        text = f"{rng.randint(1, 3)}楼{rng.choice('ABCD')}{rng.randint(1, 199):03d}铺"
    else:
        text = f"{rng.randint(1, 300)}号摊位"
    return Inner((text,), "stall")


def agency_forms(rng: random.Random, area: Area, table=_AGENCIES) -> tuple[str, ...]:
    """An office of the city or of the county: 越秀区人社局, 榆林市第二医院."""
    forms, level = rng.choice(table)
    county_level = level == "any" and area.unit.county is not None and rng.random() < 0.5
    owner = area.unit.county if county_level else area.unit.city_name
    full = owner + forms[0]
    out = [full]
    out += [owner + f for f in forms[1:]]
    short = short_name(owner)
    if short != owner:
        out += [short + f for f in forms]
    if owner.endswith("市") and len(forms) > 1:
        out.append("市" + forms[-1])
    return tuple(dict.fromkeys(out))


def campus_forms(rng: random.Random, area: Area) -> tuple[tuple[str, ...], str | None]:
    """(forms, campus): 浙江大学 / 浙大, with an optional campus name (紫金港校区)."""
    kind, abbr = rng.choice(_CAMPUS_KIND)
    place = rng.choice((short_name(area.unit.province), short_name(area.unit.city_name), stem(rng)))
    if len(place) > 3:
        place = stem(rng)
    forms = (place + kind, place[0] + abbr) if len(place) == 2 else (place + kind,)
    campus = None
    if rng.random() < 0.35:
        campus = rng.choice((stem(rng) + "校区", town_short(area.town or "") + "校区",
                             rng.choice("东西南北") + "校区", "主校区", "本部"))
        if campus == "校区":
            campus = "主校区"
    return forms, campus


def new_site(rng: random.Random, area: Area, kind: str | None = None) -> Spot:
    """A site at a house number on a road, of a kind drawn by its share of real traffic."""
    if kind is None:
        kind = rng.choices(
            ("door", "tower", "compound", "park", "mall", "campus", "hospital", "market",
             "station", "agency", "school", "hotel", "shop", "scenic"),
            (14, 12, 16, 6, 6, 3, 4, 2.5, 1.5, 5, 2.5, 3, 9, 1.5))[0]
    road = road_name(rng, area)
    spot = Spot(area=area, road=road, num=house_number(rng), kind=kind)
    name: tuple[str, ...] = ()
    city = short_name(area.unit.city_name)
    if kind == "tower":
        name = (stem(rng) + rng.choice(_TOWER),)
    elif kind == "compound":
        base = stem(rng) + rng.choice(_COMPOUND)
        if rng.random() < 0.12:
            base = rng.choice(_DEVELOPERS) + base
        name = (base,)
    elif kind == "park":
        name = (stem(rng) + rng.choice(_PARK),)
    elif kind == "mall":
        if rng.random() < 0.5:
            brand = rng.choice(_MALL_BRANDS)
            local = rng.choice((town_short(area.town or ""), short_name(area.unit.leaf), city))
            name = (local + brand, brand) if len(local) <= 4 else (brand,)
        else:
            name = (stem(rng) + rng.choice(_MALL),)
    elif kind == "campus":
        forms, campus = campus_forms(rng, area)
        name = tuple(f + (campus or "") for f in forms)
    elif kind == "hospital":
        if rng.random() < 0.6:
            name = agency_forms(rng, area, _HOSPITALS)
        else:
            name = (stem(rng) + rng.choice(("医院", "医院", "中医院", "骨科医院", "妇产医院")),)
    elif kind == "market":
        name = (stem(rng) + rng.choice(_MARKET),)
        if rng.random() < 0.3:
            name = (city + name[0], name[0])
    elif kind == "station":
        suffix = rng.choice(_STATIONS)
        base = short_name(area.unit.leaf) if suffix.startswith(("汽车", "客运", "长途")) else city
        if len(base) > 3 or len(base) < 2:
            base = city
        name = (base + suffix,)
        spot = replace(spot, road=spot.road if rng.random() < 0.6 else None,
                       num=spot.num if rng.random() < 0.6 else None)
    elif kind == "agency":
        name = agency_forms(rng, area)
    elif kind == "school":
        forms, level = rng.choice(_SCHOOLS)
        owner = area.unit.city_name if level == "city" or not area.unit.county \
            or rng.random() < 0.5 else area.unit.county
        name = tuple(owner + f for f in forms)
        if rng.random() < 0.3:
            name = (stem(rng) + rng.choice(("小学", "中学", "幼儿园", "实验学校")),)
    elif kind == "hotel":
        name = (stem(rng) + rng.choice(_HOTEL),)
    elif kind == "scenic":
        base = stem(rng) + rng.choice(_SCENIC)
        name = (base, city + base) if rng.random() < 0.3 else (base,)
    elif kind == "shop":
        if rng.random() < 0.4:
            inner = shop(rng)
            name = inner.forms
            if rng.random() < 0.6 and inner.forms[0] in {b[0] for b in SHOP_BRANDS}:
                spot = replace(spot, branch=_branch_name(rng, spot))
        elif rng.random() < 0.5:
            name = bank(rng, stem(rng)).forms
        else:
            name = shop(rng).forms if rng.random() < 0.3 else (
                rng.choice(_LOCAL_SHOPS).format(s=stem(rng), n=rng.choice(SURNAMES),
                                                f=rng.choice(_FOODS)),)
    return replace(spot, name=name)


def _branch_name(rng: random.Random, spot: Spot) -> str:
    """A chain store's branch: 农业路店, 福州恒力城店, 火车站店."""
    r = rng.random()
    if r < 0.5 and spot.road:
        return short_name(spot.road) if len(spot.road) > 2 else spot.road
    if r < 0.8:
        return town_short(spot.area.town or "") or stem(rng)
    return stem(rng) + rng.choice(("广场", "万达", "天街", "火车站", "大学城"))


def new_road_spot(rng: random.Random, area: Area) -> Spot:
    return Spot(area=area, road=road_name(rng, area))


def new_village(rng: random.Random, area: Area) -> Spot:
    name = stem(rng) + rng.choice(("村", "村", "村", "社区", "新村", "屯"))
    return Spot(area=area, village=name, kind="village")


def new_part(rng: random.Random, spot: Spot, other_than: Part | None = None) -> Part:
    """A building or block of the site `spot` (3栋 of a compound, A座 of a centre)."""
    mark = other_than.mark if other_than else None
    if mark is None:
        if spot.kind == "compound":
            mark = "栋" if rng.random() < 0.93 else "区"
        elif spot.kind == "park":
            mark = rng.choice(("栋", "栋", "座", "code"))
        elif spot.kind in ("mall", "tower"):
            mark = rng.choice(("座", "座", "馆", "写字楼"))
        elif spot.kind == "market":
            mark = "区"
        else:
            mark = "栋"
    for _ in range(50):
        if mark == "栋":
            label = str(rng.randint(1, 40) if rng.random() < 0.85 else rng.randint(41, 99))
        elif mark in ("座", "馆", "写字楼"):
            label = rng.choice("ABCDEFG") if rng.random() < 0.9 else rng.choice("123")
        elif mark == "区":
            label = rng.choice("ABCDEFGH") if spot.kind != "market" else rng.choice("一二三四五")
        else:  # code: B18, E3, D8
            mark = "code"
            label = rng.choice("ABCDEFG") + str(rng.randint(1, 30))
        if other_than is None or label != other_than.label:
            return Part(label, mark)
    return Part("99", "栋")


def sibling_part(rng: random.Random, part: Part) -> Part:
    """Another building of the same complex, labelled the same way (3栋 -> 5栋, A座 -> C座)."""
    if part.mark == "栋":
        while True:
            n = int(part.label) + rng.choice((-2, -1, 1, 2, 3)) if rng.random() < 0.5 \
                else rng.randint(1, 40)
            if n > 0 and str(n) != part.label:
                return Part(str(n), "栋")
    if part.mark == "code":
        while True:
            label = (part.label[0] if rng.random() < 0.5 else rng.choice("ABCDEFG")) + \
                str(rng.randint(1, 30))
            if label != part.label:
                return Part(label, "code")
    pool = "123" if part.label.isdigit() else "一二三四五" if not part.label.isascii() \
        else "ABCDEFGH"
    return Part(rng.choice([c for c in pool if c != part.label]), part.mark)


def room_number(rng: random.Random, floors: int = 33) -> int:
    return rng.randint(1, floors) * 100 + rng.randint(1, 12)


def facility(rng: random.Random, kind: str) -> Inner:
    return Inner((rng.choice(FACILITIES.get(kind, FACILITIES["park"])),), "facility")


def scenic_spot(rng: random.Random) -> Inner:
    """A spot inside a scenic area: 断桥, 观景台."""
    return Inner((stem(rng) + rng.choice(_SCENIC_SPOTS),), "spot")


def building_type(rng: random.Random) -> Inner:
    """An unnamed building of a door number, by its use: 商住楼, 综合楼, 门面房."""
    return Inner((rng.choice(("商住楼", "综合楼", "办公楼", "主楼", "副楼", "门面房", "宿舍楼",
                              "裙楼", "临街商铺")),), "building")


def gate(rng: random.Random, kind: str) -> str:
    return rng.choice(GATES.get(kind, GATES["compound"]))


def relative_note(rng: random.Random) -> str:
    """对面, 旁, 东北60米 and the like: where something stands relative to a landmark."""
    r = rng.random()
    if r < 0.35:
        return rng.choice(("对面", "旁", "旁边", "附近", "斜对面", "隔壁", "后面"))
    if r < 0.75:
        return rng.choice(_DIRECTIONS) + str(rng.choice((20, 30, 50, 60, 80, 100, 150, 200))) + "米"
    return rng.choice(_DIRECTIONS) + "侧"


def landmark_name(rng: random.Random, area: Area) -> str:
    """A well-known spot people locate things by: a bank, a station, a school, a square."""
    r = rng.random()
    if r < 0.3:
        return rng.choice(_BANKS)[0]
    if r < 0.5:
        return short_name(area.unit.city_name) + rng.choice(("火车站", "汽车站", "高铁站", "体育馆"))
    if r < 0.7:
        return stem(rng) + rng.choice(("广场", "公园", "小学", "中学", "医院", "大厦", "超市"))
    if r < 0.85:
        return rng.choice(("地铁站", "公交站", "十字路口", "红绿灯", "加油站"))
    return rng.choice([b[0] for b in SHOP_BRANDS[:12]])


def corner(rng: random.Random) -> str:
    return rng.choice(_CORNERS)
