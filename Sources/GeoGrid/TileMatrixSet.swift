import Foundation

/// One zoom level of a tile matrix set (OGC Two Dimensional Tile Matrix Set 2.0).
public struct TileMatrix: Sendable, Hashable, Codable {
    public var id: String
    public var scaleDenominator: Double
    public var cellSize: Double
    public var cornerOfOrigin: String?
    public var pointOfOrigin: [Double]
    public var tileWidth: Int
    public var tileHeight: Int
    public var matrixWidth: Int
    public var matrixHeight: Int

    /// The standardized rendering pixel size (0.28 mm) that relates cell size and scale denominator.
    public static let standardPixelSize = 0.00028

    public init(
        id: String, cellSize: Double, pointOfOrigin: [Double], tileWidth: Int = 256, tileHeight: Int = 256,
        matrixWidth: Int, matrixHeight: Int
    ) {
        self.id = id
        self.cellSize = cellSize
        self.scaleDenominator = cellSize / Self.standardPixelSize
        self.cornerOfOrigin = "topLeft"
        self.pointOfOrigin = pointOfOrigin
        self.tileWidth = tileWidth
        self.tileHeight = tileHeight
        self.matrixWidth = matrixWidth
        self.matrixHeight = matrixHeight
    }

    /// X of the top-left corner.
    public var originX: Double { pointOfOrigin.first ?? 0 }
    /// Y of the top-left corner.
    public var originY: Double { pointOfOrigin.count > 1 ? pointOfOrigin[1] : 0 }
    /// Ground width of one tile.
    public var tileSpanX: Double { Double(tileWidth) * cellSize }
    /// Ground height of one tile.
    public var tileSpanY: Double { Double(tileHeight) * cellSize }
}

/// A tile matrix set decoded from OGC TMS 2.0 JSON: the grid that tiles and shards are aligned on.
///
/// Pure value: no files, no projections. Levels are addressed by their integer position
/// (`z`), which for every shipped grid equals the level's `id`.
public struct TileMatrixSet: Sendable, Hashable, Codable {
    public var id: String
    public var title: String?
    public var uri: String?
    public var crs: String
    public var orderedAxes: [String]?
    public var tileMatrices: [TileMatrix]

    public init(id: String, title: String? = nil, uri: String? = nil, crs: String, tileMatrices: [TileMatrix]) {
        self.id = id
        self.title = title
        self.uri = uri
        self.crs = crs
        self.orderedAxes = ["X", "Y"]
        self.tileMatrices = tileMatrices
    }

    /// Decodes and checks a TMS 2.0 JSON document.
    public static func decode(_ data: Data) throws -> TileMatrixSet {
        let tms = try JSONDecoder().decode(TileMatrixSet.self, from: data)
        try tms.check()
        return tms
    }

    /// Rejects grids this project cannot address: levels must halve the cell size and share one origin.
    public func check() throws {
        guard !tileMatrices.isEmpty else { throw GridError.invalid(id, "no tile matrices") }
        for (z, m) in tileMatrices.enumerated() {
            guard m.cellSize > 0, m.tileWidth > 0, m.tileHeight > 0, m.matrixWidth > 0, m.matrixHeight > 0,
                m.pointOfOrigin.count == 2
            else { throw GridError.invalid(id, "level \(m.id) has a non-positive size or a bad origin") }
            if z > 0 {
                let ratio = tileMatrices[z - 1].cellSize / m.cellSize
                guard abs(ratio - 2) < 1e-9 else {
                    throw GridError.invalid(id, "level \(m.id) does not halve the cell size of level \(z - 1)")
                }
            }
            let relative = abs(m.scaleDenominator * TileMatrix.standardPixelSize - m.cellSize) / m.cellSize
            guard relative < 1e-6 else {
                throw GridError.invalid(id, "level \(m.id): scaleDenominator and cellSize disagree")
            }
        }
    }

    /// The EPSG code of the grid's CRS, read from `EPSG:n` or an OGC CRS URI.
    public var epsg: Int? {
        if let r = crs.range(of: "EPSG:") { return Int(crs[r.upperBound...]) }
        if crs.contains("/EPSG/"), let last = crs.split(separator: "/").last { return Int(last) }
        return nil
    }

    /// The deepest level index.
    public var maxZoom: Int { tileMatrices.count - 1 }

    /// The ground every level of the grid covers (a Lambert-93 grid's levels have tiles of their
    /// own sizes over matrices of their own: the common part is the deepest level's, mostly).
    public var extent: BoundingBox {
        let boxes = tileMatrices.map { m in
            BoundingBox(
                minX: m.originX, minY: m.originY - Double(m.matrixHeight) * m.tileSpanY,
                maxX: m.originX + Double(m.matrixWidth) * m.tileSpanX, maxY: m.originY)
        }
        let none = BoundingBox(minX: 0, minY: 0, maxX: 0, maxY: 0)
        guard let first = boxes.first else { return none }
        return boxes.dropFirst().reduce(first as BoundingBox?) { $0?.intersection($1) } ?? none
    }

    /// The level at `z`, or nil when the grid stops before it.
    public func matrix(_ z: Int) -> TileMatrix? {
        tileMatrices.indices.contains(z) ? tileMatrices[z] : nil
    }

    /// The ground rectangle of one tile.
    public func bounds(of tile: TileCoordinate) -> BoundingBox {
        let m = tileMatrices[tile.z]
        let minX = m.originX + Double(tile.col) * m.tileSpanX
        let maxY = m.originY - Double(tile.row) * m.tileSpanY
        return BoundingBox(minX: minX, minY: maxY - m.tileSpanY, maxX: minX + m.tileSpanX, maxY: maxY)
    }

    /// The ground rectangle of a block of tiles.
    public func bounds(of range: TileRange) -> BoundingBox {
        let m = tileMatrices[range.z]
        let minX = m.originX + Double(range.minCol) * m.tileSpanX
        let maxY = m.originY - Double(range.minRow) * m.tileSpanY
        return BoundingBox(
            minX: minX, minY: maxY - Double(range.rowCount) * m.tileSpanY,
            maxX: minX + Double(range.colCount) * m.tileSpanX, maxY: maxY)
    }

    /// The tiles at level `z` whose area meets `box`, clipped to the matrix; nil when none.
    ///
    /// A box that only touches a tile edge does not select the tile beyond the edge.
    public func tiles(covering box: BoundingBox, z: Int) -> TileRange? {
        let m = tileMatrices[z]
        let eps = 1e-9 * max(1, m.cellSize)
        // Bounded conversions: a box from a request may reach ±1e30 (or be NaN).
        let c0 = Int(bounded: (box.minX - m.originX) / m.tileSpanX + eps, .down)
        let c1 = Int(bounded: (box.maxX - m.originX) / m.tileSpanX - eps, .up) - 1
        let r0 = Int(bounded: (m.originY - box.maxY) / m.tileSpanY + eps, .down)
        let r1 = Int(bounded: (m.originY - box.minY) / m.tileSpanY - eps, .up) - 1
        let range = TileRange(
            z: z, minCol: max(0, c0), minRow: max(0, r0),
            maxCol: min(m.matrixWidth - 1, c1), maxRow: min(m.matrixHeight - 1, r1))
        return range.isEmpty ? nil : range
    }

    /// The deepest useful level for imagery of `resolution` ground units per pixel: the coarsest level
    /// whose cell is at most 1.5 × the resolution, so no level is made finer than the source deserves.
    public func zoom(forResolution resolution: Double) -> Int {
        for (z, m) in tileMatrices.enumerated() where m.cellSize <= resolution * 1.5 * (1 + 1e-9) {
            return z
        }
        return maxZoom
    }

    /// The level whose cell size is nearest (in scale) to `resolution` without being coarser
    /// than it by more than 10 %: used to read a pyramid for a given output resolution.
    public func zoom(forReading resolution: Double, maxZoom: Int) -> Int {
        var best = 0
        for (z, m) in tileMatrices.enumerated() where z <= maxZoom {
            if m.cellSize <= resolution * 1.1 { return z }
            best = z
        }
        return best
    }
}

/// A grid that cannot be used.
public enum GridError: Error, CustomStringConvertible {
    case invalid(String, String)
    /// No folder of grids where one was expected (its path).
    case noFolder(String)

    public var description: String {
        switch self {
        case .invalid(let id, let why): "tile matrix set \(id): \(why)"
        case .noFolder(let path):
            "no folder of grids at \(path): give --tms-dir or DALLAGE_TMS_DIR (the project's config/tms)"
        }
    }
}
