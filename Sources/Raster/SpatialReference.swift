import CGDAL
import Foundation
import GeoGrid

/// A coordinate reference system (OGR/PROJ), with longitude-first axis order for geographic ones.
public final class SpatialReference: @unchecked Sendable {
    let handle: OGRSpatialReferenceH

    /// A CRS from "EPSG:n", an OGC CRS URI, WKT or PROJ string.
    public init(_ definition: String) throws {
        GDAL.initialize()
        guard let h = OSRNewSpatialReference(nil) else { throw RasterError("cannot allocate a CRS") }
        OSRSetAxisMappingStrategy(h, OAMS_TRADITIONAL_GIS_ORDER)
        var def = definition
        if def.contains("/def/crs/EPSG/"), let code = def.split(separator: "/").last { def = "EPSG:\(code)" }
        if def.contains("/def/crs/OGC/") && def.hasSuffix("CRS84") { def = "OGC:CRS84" }
        guard OSRSetFromUserInput(h, def) == OGRERR_NONE else {
            OSRDestroySpatialReference(h)
            throw RasterError("unknown CRS '\(definition)'")
        }
        handle = h
    }

    /// A CRS from an EPSG code.
    public convenience init(epsg: Int) throws { try self.init("EPSG:\(epsg)") }

    deinit { OSRDestroySpatialReference(handle) }

    /// True for longitude/latitude CRSs.
    public var isGeographic: Bool { OSRIsGeographic(handle) != 0 }

    /// WGS84 longitude/latitude.
    public static func wgs84() throws -> SpatialReference { try SpatialReference("EPSG:4326") }

    /// The EPSG code when PROJ can identify one.
    public var epsg: Int? {
        let clone = OSRClone(handle)
        defer { OSRDestroySpatialReference(clone) }
        _ = OSRAutoIdentifyEPSG(clone)
        let key: String? = OSRIsProjected(clone) != 0 ? "PROJCS" : (OSRIsGeographic(clone) != 0 ? "GEOGCS" : nil)
        guard let key, let auth = OSRGetAuthorityName(clone, key), String(cString: auth) == "EPSG",
            let code = OSRGetAuthorityCode(clone, key)
        else { return nil }
        return Int(String(cString: code))
    }

    /// WKT (2 when PROJ has it), for VRTs, .prj files and GDAL datasets.
    public var wkt: String {
        var out: UnsafeMutablePointer<CChar>? = nil
        _ = OSRExportToWkt(handle, &out)
        defer { VSIFree(out) }
        return out.map { String(cString: $0) } ?? ""
    }

    /// True when both describe the same CRS (ignoring names and axis order metadata).
    public func isSame(as other: SpatialReference) -> Bool {
        OSRIsSame(handle, other.handle) != 0
    }

    /// A short name like "RGF93 v1 / Lambert-93".
    public var name: String {
        OSRGetName(handle).map { String(cString: $0) } ?? "unnamed"
    }
}

/// A transformation between two CRSs. Holds a PROJ object: one per task, never shared.
public final class CoordinateTransform {
    let handle: OGRCoordinateTransformationH

    public init(from source: SpatialReference, to target: SpatialReference) throws {
        guard let h = OCTNewCoordinateTransformation(source.handle, target.handle) else {
            throw RasterError.gdal("no transformation from \(source.name) to \(target.name)")
        }
        handle = h
    }

    deinit { OCTDestroyCoordinateTransformation(handle) }

    /// Transforms points in place; false for a point that cannot be transformed.
    @discardableResult
    public func transform(x: inout [Double], y: inout [Double]) -> [Bool] {
        let n = x.count
        var ok = [Int32](repeating: 0, count: n)
        x.withUnsafeMutableBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { yp in
                _ = OCTTransformEx(handle, Int32(n), xp.baseAddress, yp.baseAddress, nil, &ok)
            }
        }
        return ok.map { $0 != 0 }
    }

    /// The bounding box of `box` after transformation, from `density` points along each edge.
    public func transform(_ box: BoundingBox, density: Int = 21) throws -> BoundingBox {
        var xs: [Double] = []
        var ys: [Double] = []
        for i in 0..<density {
            let t = Double(i) / Double(density - 1)
            let x = box.minX + t * (box.maxX - box.minX)
            let y = box.minY + t * (box.maxY - box.minY)
            xs += [x, x, box.minX, box.maxX]
            ys += [box.minY, box.maxY, y, y]
        }
        let ok = transform(x: &xs, y: &ys)
        var out: BoundingBox? = nil
        for i in xs.indices where ok[i] && xs[i].isFinite && ys[i].isFinite {
            let p = BoundingBox(minX: xs[i], minY: ys[i], maxX: xs[i], maxY: ys[i])
            out =
                out.map {
                    BoundingBox(
                        minX: min($0.minX, p.minX), minY: min($0.minY, p.minY), maxX: max($0.maxX, p.maxX),
                        maxY: max($0.maxY, p.maxY))
                } ?? p
        }
        guard let out else { throw RasterError("the rectangle \(box) cannot be transformed") }
        return out
    }
}
