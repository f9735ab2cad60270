import Foundation
import Testing

@testable import GeoGrid

private func loadGrid(_ id: String) throws -> TileMatrixSet {
    let url = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("config/tms/\(id).json")
    return try TileMatrixSet.decode(Data(contentsOf: url))
}

struct GridTests {
    @Test(arguments: [
        // grid, z, cell size (m), top-left corner x, y
        ("PM", 0, 156543.033928041, -20037508.3427892, 20037508.3427892),
        ("PM", 19, 0.29858214173896974, -20037508.3427892, 20037508.3427892),
        ("PM", 21, 0.07464553543474244, -20037508.3427892, 20037508.3427892),
        ("PM", 22, 0.03732276771737122, -20037508.3427892, 20037508.3427892),
        ("2154_5cm", 0, 209715.2, 0.0, 12_000_000.0),
        ("2154_5cm", 20, 0.2, 0.0, 12_000_000.0),
        ("2154_5cm", 21, 0.1, 0.0, 12_000_000.0),
        ("2154_5cm", 22, 0.05, 0.0, 12_000_000.0),
        ("2154_10cm", 21, 0.1, 0.0, 12_000_000.0),
    ])
    func cellSizeAndCorner(grid: String, z: Int, cell: Double, x: Double, y: Double) throws {
        let tms = try loadGrid(grid)
        let m = try #require(tms.matrix(z))
        #expect(abs(m.cellSize - cell) / cell < 1e-12)
        #expect(abs(m.scaleDenominator * 0.00028 - m.cellSize) / cell < 1e-9)
        let b = tms.bounds(of: TileCoordinate(z: z, col: 0, row: 0))
        #expect(b.minX == x && b.maxY == y)
        #expect(abs(b.width - 256 * cell) < 1e-6)
    }

    @Test func levelCounts() throws {
        #expect(try loadGrid("PM").maxZoom == 22)
        #expect(try loadGrid("2154_5cm").maxZoom == 22)
        #expect(try loadGrid("2154_10cm").maxZoom == 21)
        #expect(try loadGrid("2154_5cm").epsg == 2154)
        #expect(try loadGrid("PM").epsg == 3857)
    }

    @Test func webMercatorIsSymmetric() throws {
        let tms = try loadGrid("PM")
        // z1 has four tiles meeting at (0, 0).
        let b = tms.bounds(of: TileCoordinate(z: 1, col: 1, row: 1))
        #expect(abs(b.minX) < 1e-6 && abs(b.maxY) < 1e-6)
        #expect(abs(b.maxX - 20037508.3427892) < 1e-6)
    }

    @Test func pcrsDalleIsWholeTilesAtZ22() throws {
        // A 200 m PCRS dalle whose corner is a multiple of 200 m starts on a pixel of z22,
        // so the 5 cm source is copied, not resampled.
        let tms = try loadGrid("2154_5cm")
        let dalle = BoundingBox(minX: 650_200, minY: 6_860_200, maxX: 650_400, maxY: 6_860_400)
        let range = try #require(tms.tiles(covering: dalle, z: 22))
        let m = tms.tileMatrices[22]
        let px = (dalle.minX - m.originX) / m.cellSize
        #expect(px == px.rounded())
        #expect(range.colCount == 17 || range.colCount == 16)
    }

    @Test(arguments: [
        (0.05, "2154_5cm", 22), (0.05, "PM", 21), (0.2, "2154_5cm", 20), (0.2, "PM", 19), (0.1, "2154_10cm", 21),
    ])
    func zoomFromResolution(resolution: Double, grid: String, z: Int) throws {
        #expect(try loadGrid(grid).zoom(forResolution: resolution) == z)
    }

    @Test func coveringDoesNotSpillOverEdges() throws {
        let tms = try loadGrid("2154_5cm")
        let tile = TileCoordinate(z: 15, col: 100, row: 200)
        let r = try #require(tms.tiles(covering: tms.bounds(of: tile), z: 15))
        #expect(r.count == 1 && r.contains(tile))
        let r2 = try #require(tms.tiles(covering: tms.bounds(of: tile), z: 16))
        #expect(r2 == tile.descendants(levels: 1))
    }

    @Test func bandsAndShards() {
        let scheme = ShardScheme(minZoom: 0, maxZoom: 22)
        #expect(scheme.bands.map(\.deepest) == [22, 14, 6])
        #expect(scheme.bands.map(\.top) == [15, 7, 0])
        let loc = scheme.locate(TileCoordinate(z: 22, col: 128 * 5 + 3, row: 128 * 9 + 127))!
        #expect(loc.shard == TileCoordinate(z: 15, col: 5, row: 9))
        #expect(loc.overview == 0 && loc.col == 3 && loc.row == 127 && loc.tilesPerSide == 128)
        let top = scheme.locate(TileCoordinate(z: 15, col: 5, row: 9))!
        #expect(top.overview == 7 && top.tilesPerSide == 1 && top.shard == TileCoordinate(z: 15, col: 5, row: 9))
        let low = scheme.locate(TileCoordinate(z: 3, col: 2, row: 1))!
        #expect(low.band == ShardScheme.Band(deepest: 6, top: 0) && low.shard == TileCoordinate(z: 0, col: 0, row: 0))
        #expect(low.overview == 3 && low.tilesPerSide == 8)
        #expect(scheme.locate(TileCoordinate(z: 23, col: 0, row: 0)) == nil)
        #expect(ShardScheme.path(of: loc.shard) == "shards/15/5/9.tif")
    }

    @Test func rejectsABrokenGrid() {
        var m = TileMatrix(id: "0", cellSize: 1, pointOfOrigin: [0, 0], matrixWidth: 1, matrixHeight: 1)
        m.scaleDenominator = 1
        #expect(throws: GridError.self) { try TileMatrixSet(id: "x", crs: "EPSG:2154", tileMatrices: [m]).check() }
    }
}
