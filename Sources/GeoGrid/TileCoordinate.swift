/// One tile of a grid: level, column (from the left) and row (from the top).
public struct TileCoordinate: Sendable, Hashable, Codable, CustomStringConvertible {
    public var z: Int
    public var col: Int
    public var row: Int

    public init(z: Int, col: Int, row: Int) {
        self.z = z
        self.col = col
        self.row = row
    }

    /// The tile containing this one `levels` levels up.
    public func ancestor(levels: Int) -> TileCoordinate {
        TileCoordinate(z: z - levels, col: col >> levels, row: row >> levels)
    }

    /// The block of tiles covering this one `levels` levels down.
    public func descendants(levels: Int) -> TileRange {
        let n = 1 << levels
        return TileRange(
            z: z + levels, minCol: col * n, minRow: row * n, maxCol: col * n + n - 1, maxRow: row * n + n - 1)
    }

    public var description: String { "\(z)/\(col)/\(row)" }
}

/// An inclusive rectangle of tiles at one level.
public struct TileRange: Sendable, Hashable, Codable {
    public var z: Int
    public var minCol: Int
    public var minRow: Int
    public var maxCol: Int
    public var maxRow: Int

    public init(z: Int, minCol: Int, minRow: Int, maxCol: Int, maxRow: Int) {
        self.z = z
        self.minCol = minCol
        self.minRow = minRow
        self.maxCol = maxCol
        self.maxRow = maxRow
    }

    public var isEmpty: Bool { maxCol < minCol || maxRow < minRow }
    public var colCount: Int { max(0, maxCol - minCol + 1) }
    public var rowCount: Int { max(0, maxRow - minRow + 1) }
    public var count: Int { colCount * rowCount }

    public func contains(_ t: TileCoordinate) -> Bool {
        t.z == z && t.col >= minCol && t.col <= maxCol && t.row >= minRow && t.row <= maxRow
    }

    /// The smallest range holding both (same level).
    public func union(_ other: TileRange) -> TileRange {
        TileRange(
            z: z, minCol: min(minCol, other.minCol), minRow: min(minRow, other.minRow),
            maxCol: max(maxCol, other.maxCol), maxRow: max(maxRow, other.maxRow))
    }

    /// Every tile, row by row.
    public var tiles: [TileCoordinate] {
        var out: [TileCoordinate] = []
        out.reserveCapacity(count)
        for r in stride(from: minRow, through: maxRow, by: 1) {
            for c in stride(from: minCol, through: maxCol, by: 1) { out.append(TileCoordinate(z: z, col: c, row: r)) }
        }
        return out
    }
}
