import Pyramid
import Testing

/// Which pyramid of a tileset WMS, extracts and tiled progress read.
struct PreferredGridTests {
    static let crs = [
        "2154_5cm": "http://www.opengis.net/def/crs/EPSG/0/2154", "2154_10cm": "EPSG:2154",
        "3949_5cm": "http://www.opengis.net/def/crs/EPSG/0/3949", "PM": "http://www.opengis.net/def/crs/EPSG/0/3857",
    ]

    @Test(arguments: [
        // The grid the setting names, wherever it is in the list.
        (["2154_10cm", "2154_5cm", "PM"], "2154_5cm", "2154_5cm"),
        (["2154_5cm", "PM"], "PM", "PM"),
        // Without it: the first grid in Lambert-93, even after others…
        (["2154_10cm", "PM"], "2154_5cm", "2154_10cm"),
        (["PM", "3949_5cm", "2154_10cm"], "2154_5cm", "2154_10cm"),
        // … else the first grid; an unknown CRS is not Lambert-93.
        (["PM", "3949_5cm"], "2154_5cm", "PM"),
        (["unknown", "PM"], "2154_5cm", "unknown"),
    ])
    func theSettingThenLambert93ThenTheFirst(grids: [String], setting: String, expected: String) {
        #expect(preferredPyramid(among: grids, setting: setting, grid: { $0 }, crs: { Self.crs[$0] ?? "" }) == expected)
    }

    @Test func noPyramidNoChoice() {
        #expect(preferredPyramid(among: [String](), setting: "2154_5cm", grid: { $0 }, crs: { _ in "" }) == nil)
    }

    @Test(arguments: [
        ("EPSG:2154", true), ("http://www.opengis.net/def/crs/EPSG/0/2154", true), ("urn:ogc:def:crs:EPSG::2154", true),
        ("EPSG:3949", false), ("EPSG:3857", false), ("OGC:CRS84", false), ("not a CRS", false),
    ])
    func lambert93InItsSpellings(crs: String, expected: Bool) {
        #expect(isLambert93(crs) == expected)
    }
}
