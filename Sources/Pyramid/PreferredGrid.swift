import Foundation
import Raster

/// The pyramid that stands for all the grids of one tileset where a single one is read — WMS
/// GetMap in a CRS none of its grids is in, WMS capabilities, extracts, tiled progress: the one
/// on the grid named by `setting` (the server's `render_grid`, `dallage extract --grid`), else the
/// first in Lambert-93, else the first. `pyramids` come in the caller's order; `grid` names a
/// pyramid's grid and `crs` gives its CRS as the tile matrix set writes it. Nil only when
/// `pyramids` is empty.
public func preferredPyramid<P>(
    among pyramids: [P], setting: String, grid: (P) -> String, crs: (P) -> String
) -> P? {
    pyramids.first { grid($0) == setting } ?? pyramids.first { isLambert93(crs($0)) } ?? pyramids.first
}

/// The grid read where a single one is (`render_grid`, `dallage extract --grid`): IGN's Lambert-93
/// grid, the PCRS's native one.
public let defaultRenderGrid = "2154_5cm"

/// True when `crs` (`EPSG:2154`, an OGC CRS URI, WKT…) is Lambert-93.
public func isLambert93(_ crs: String) -> Bool {
    guard let candidate = try? SpatialReference(crs), let lambert93 = try? SpatialReference(epsg: 2154) else {
        return false
    }
    return candidate.isSame(as: lambert93)
}
