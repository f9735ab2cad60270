/// How a pyramid's levels are cut into bands and its bands into shards (see DESIGN.md).
///
/// A band holds up to `levelsPerBand` consecutive levels. In the band whose deepest level is
/// `deepest`, a shard is the area of one tile at `top` and stores levels `deepest…top` as a COG:
/// the full-resolution image and its overviews, one internal TIFF tile per grid tile.
public struct ShardScheme: Sendable, Hashable, Codable {
    /// One band of levels.
    public struct Band: Sendable, Hashable, Codable {
        /// The deepest (finest) level, the shard's full-resolution image.
        public var deepest: Int
        /// The coarsest level, where one tile covers the whole shard.
        public var top: Int

        public init(deepest: Int, top: Int) {
            self.deepest = deepest
            self.top = top
        }

        /// The number of levels in each shard of this band.
        public var levelCount: Int { deepest - top + 1 }
        /// Tiles per side of the shard at its deepest level.
        public var tilesPerSide: Int { 1 << (deepest - top) }
    }

    /// Default levels per band: 8, so a shard holds 128×128 tiles down to one (DESIGN.md: k = 7).
    public static let defaultLevelsPerBand = 8

    public var levelsPerBand: Int
    public var minZoom: Int
    public var maxZoom: Int

    public init(minZoom: Int, maxZoom: Int, levelsPerBand: Int = ShardScheme.defaultLevelsPerBand) {
        self.minZoom = minZoom
        self.maxZoom = maxZoom
        self.levelsPerBand = max(1, levelsPerBand)
    }

    /// The bands from the deepest to the coarsest.
    public var bands: [Band] {
        var out: [Band] = []
        var deepest = maxZoom
        while deepest >= minZoom {
            let top = max(minZoom, deepest - levelsPerBand + 1)
            out.append(Band(deepest: deepest, top: top))
            deepest = top - 1
        }
        return out
    }

    /// The band holding level `z`, or nil outside the zoom range.
    public func band(containing z: Int) -> Band? {
        guard z >= minZoom, z <= maxZoom else { return nil }
        let index = (maxZoom - z) / levelsPerBand
        let deepest = maxZoom - index * levelsPerBand
        return Band(deepest: deepest, top: max(minZoom, deepest - levelsPerBand + 1))
    }

    /// Where a tile is stored: its shard (a tile at the band's top level), the overview index
    /// (0 = full resolution) and the tile's column and row inside that image.
    public func locate(_ tile: TileCoordinate) -> ShardLocation? {
        guard let band = band(containing: tile.z) else { return nil }
        let up = tile.z - band.top
        let shard = tile.ancestor(levels: up)
        return ShardLocation(
            shard: shard, band: band, overview: band.deepest - tile.z,
            col: tile.col - (shard.col << up), row: tile.row - (shard.row << up), tilesPerSide: 1 << up)
    }

    /// The relative path of a shard file inside a pyramid directory.
    public static func path(of shard: TileCoordinate) -> String {
        "shards/\(shard.z)/\(shard.col)/\(shard.row).tif"
    }
}

/// The answer of `ShardScheme.locate`: a tile's shard and its place inside.
public struct ShardLocation: Sendable, Hashable {
    public var shard: TileCoordinate
    public var band: ShardScheme.Band
    /// 0 for the full-resolution image, n for the n-th overview.
    public var overview: Int
    public var col: Int
    public var row: Int
    /// Tiles per side of that image.
    public var tilesPerSide: Int

    /// The tile's index in the TIFF tile arrays (row-major).
    public var tileIndex: Int { row * tilesPerSide + col }
}
