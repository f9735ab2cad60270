import CGDAL
import Foundation
import GeoGrid

/// An OGR geometry (GEOS behind the set operations). Immutable once made: every operation
/// returns a new geometry, so one value may be read from several tasks at once.
public final class Geometry: @unchecked Sendable {
    let handle: OGRGeometryH

    init(owning handle: OGRGeometryH) { self.handle = handle }

    deinit { OGR_G_DestroyGeometry(handle) }

    /// A geometry from a GeoJSON geometry object (the text of `{"type": …, "coordinates": …}`).
    public static func fromGeoJSON(_ json: String) throws -> Geometry {
        GDAL.initialize()
        CPLErrorReset()
        guard let h = OGR_G_CreateGeometryFromJson(json) else { throw RasterError.gdal("not a GeoJSON geometry") }
        return Geometry(owning: h)
    }

    /// A geometry from WKT.
    public static func fromWKT(_ wkt: String) throws -> Geometry {
        GDAL.initialize()
        var h: OGRGeometryH?
        var text: UnsafeMutablePointer<CChar>? = strdup(wkt)
        let start = text
        defer { free(start) }
        guard OGR_G_CreateFromWkt(&text, nil, &h) == OGRERR_NONE, let h else {
            throw RasterError("not a WKT geometry")
        }
        return Geometry(owning: h)
    }

    /// A geometry from ISO WKB bytes.
    public static func fromWKB(_ bytes: [UInt8]) throws -> Geometry {
        GDAL.initialize()
        var h: OGRGeometryH?
        let err = bytes.withUnsafeBytes { b in
            OGR_G_CreateFromWkb(b.baseAddress, nil, &h, Int32(bytes.count))
        }
        guard err == OGRERR_NONE, let h else { throw RasterError("not a WKB geometry") }
        return Geometry(owning: h)
    }

    /// The rectangle of a bounding box.
    public static func rectangle(_ b: BoundingBox) -> Geometry {
        // A closed ring of five points is always valid WKT.
        try! fromWKT(
            "POLYGON ((\(b.minX) \(b.minY), \(b.maxX) \(b.minY), \(b.maxX) \(b.maxY), \(b.minX) \(b.maxY), \(b.minX) \(b.minY)))"
        )
    }

    /// An empty multipolygon.
    public static func empty() -> Geometry { try! fromWKT("MULTIPOLYGON EMPTY") }

    /// The union of many polygonal geometries at once (cascaded: much faster than one by one).
    public static func union(_ parts: [Geometry]) throws -> Geometry {
        guard let multi = OGR_G_CreateGeometry(wkbMultiPolygon) else { throw RasterError("cannot allocate") }
        defer { OGR_G_DestroyGeometry(multi) }
        for p in parts { p.addPolygons(to: multi) }
        if OGR_G_GetGeometryCount(multi) == 0 { return empty() }
        CPLErrorReset()
        guard let u = OGR_G_UnionCascaded(multi) else { throw RasterError.gdal("cannot union the geometries") }
        return Geometry(owning: u)
    }

    /// Adds copies of every polygon of this geometry to a multipolygon.
    private func addPolygons(to multi: OGRGeometryH) {
        func collect(_ g: OGRGeometryH) {
            let t = OGR_GT_Flatten(OGR_G_GetGeometryType(g))
            if t == wkbPolygon {
                OGR_G_AddGeometry(multi, g)
            } else if t == wkbMultiPolygon || t == wkbGeometryCollection {
                for i in 0..<OGR_G_GetGeometryCount(g) { collect(OGR_G_GetGeometryRef(g, i)) }
            }
        }
        collect(handle)
    }

    public var wkt: String {
        var out: UnsafeMutablePointer<CChar>?
        OGR_G_ExportToIsoWkt(handle, &out)
        defer { VSIFree(out) }
        return out.map { String(cString: $0) } ?? ""
    }

    public var wkb: [UInt8] {
        let n = Int(OGR_G_WkbSize(handle))
        var bytes = [UInt8](repeating: 0, count: n)
        _ = bytes.withUnsafeMutableBufferPointer { OGR_G_ExportToIsoWkb(handle, wkbNDR, $0.baseAddress) }
        return bytes
    }

    /// The GeoJSON geometry object, coordinates rounded to `precision` decimals.
    public func geoJSON(precision: Int = 7) -> String {
        let options = CStringList(["COORDINATE_PRECISION=\(precision)"])
        guard let out = OGR_G_ExportToJsonEx(handle, options.pointer) else { return "null" }
        defer { VSIFree(out) }
        return String(cString: out)
    }

    /// Area in the square units of the CRS (square metres in a projected CRS).
    public var area: Double {
        let type = OGR_GT_Flatten(OGR_G_GetGeometryType(handle))
        return type == wkbPolygon || type == wkbMultiPolygon || type == wkbGeometryCollection
            ? OGR_G_Area(handle) : 0
    }

    public var isEmpty: Bool { OGR_G_IsEmpty(handle) != 0 }
    public var isValid: Bool { OGR_G_IsValid(handle) != 0 }

    /// Number of vertices of every ring and part.
    public var pointCount: Int {
        func count(_ g: OGRGeometryH) -> Int {
            let n = Int(OGR_G_GetGeometryCount(g))
            if n == 0 { return Int(OGR_G_GetPointCount(g)) }
            return (0..<n).reduce(0) { $0 + count(OGR_G_GetGeometryRef(g, Int32($1))) }
        }
        return count(handle)
    }

    /// The geometry's type name, e.g. "POLYGON".
    public var typeName: String { String(cString: OGR_G_GetGeometryName(handle)) }

    /// True for polygons and multipolygons (what perimeters and extracts accept).
    public var isAreal: Bool {
        let type = OGR_GT_Flatten(OGR_G_GetGeometryType(handle))
        return type == wkbPolygon || type == wkbMultiPolygon
    }

    public var envelope: BoundingBox {
        var e = OGREnvelope()
        OGR_G_GetEnvelope(handle, &e)
        return BoundingBox(minX: e.MinX, minY: e.MinY, maxX: e.MaxX, maxY: e.MaxY)
    }

    /// Why the geometry is invalid (GEOS's reason), nil when valid.
    public var invalidityReason: String? {
        guard !isValid else { return nil }
        // OGR has no reason accessor: the error GEOS reported while checking is the reason.
        CPLErrorReset()
        _ = OGR_G_IsValid(handle)
        let msg = CPLGetLastErrorMsg().map { String(cString: $0) } ?? ""
        return msg.isEmpty ? "the geometry is not valid (e.g. a ring crosses itself)" : msg
    }

    /// A valid version of an invalid geometry (GEOS MakeValid), keeping only its polygons.
    public func makeValid() throws -> Geometry {
        CPLErrorReset()
        guard let v = OGR_G_MakeValid(handle) else { throw RasterError.gdal("cannot repair the geometry") }
        let fixed = Geometry(owning: v)
        return try fixed.polygonsOnly()
    }

    /// The polygonal part of the geometry as a multipolygon (drops points and lines a repair or an
    /// intersection may leave).
    public func polygonsOnly() throws -> Geometry {
        let type = OGR_GT_Flatten(OGR_G_GetGeometryType(handle))
        if type == wkbPolygon || type == wkbMultiPolygon { return try clone() }
        guard let multi = OGR_G_CreateGeometry(wkbMultiPolygon) else { throw RasterError("cannot allocate") }
        addPolygons(to: multi)
        return Geometry(owning: multi)
    }

    public func clone() throws -> Geometry {
        guard let c = OGR_G_Clone(handle) else { throw RasterError("cannot copy a geometry") }
        return Geometry(owning: c)
    }

    public func union(_ other: Geometry) throws -> Geometry {
        try binary(other, OGR_G_Union, "union")
    }

    public func intersection(_ other: Geometry) throws -> Geometry {
        try binary(other, OGR_G_Intersection, "intersect")
    }

    public func difference(_ other: Geometry) throws -> Geometry {
        try binary(other, OGR_G_Difference, "subtract")
    }

    /// A buffer of `distance` CRS units (rounded corners).
    public func buffer(_ distance: Double) throws -> Geometry {
        CPLErrorReset()
        guard let b = OGR_G_Buffer(handle, distance, 8) else { throw RasterError.gdal("cannot buffer the geometry") }
        return Geometry(owning: b)
    }

    public func intersects(_ other: Geometry) -> Bool { OGR_G_Intersects(handle, other.handle) != 0 }
    public func contains(_ other: Geometry) -> Bool { OGR_G_Contains(handle, other.handle) != 0 }

    /// The geometry in another CRS.
    public func transformed(_ t: CoordinateTransform) throws -> Geometry {
        let c = try clone()
        guard OGR_G_Transform(c.handle, t.handle) == OGRERR_NONE else {
            throw RasterError.gdal("cannot transform the geometry")
        }
        return c
    }

    private func binary(
        _ other: Geometry, _ op: (OGRGeometryH?, OGRGeometryH?) -> OGRGeometryH?, _ verb: String
    ) throws -> Geometry {
        CPLErrorReset()
        guard let r = op(handle, other.handle) else { throw RasterError.gdal("cannot \(verb) the geometries") }
        return Geometry(owning: r)
    }

    /// Burns the geometry into a `width`×`height` byte mask (255 inside, 0 outside) laid on
    /// `transform` (same CRS as the geometry); a pixel is inside when its centre is.
    public func rasterize(
        into mask: UnsafeMutablePointer<UInt8>, width: Int, height: Int, transform: GeoTransform
    ) throws {
        mask.initialize(repeating: 0, count: width * height)
        let ds = try Dataset.wrapping(rgba: mask, width: width, height: height, bands: 1)
        var gt = transform.coefficients
        GDALSetGeoTransform(ds.h, &gt)
        var band: Int32 = 1
        var burn = 255.0
        var geometry: OGRGeometryH? = handle
        CPLErrorReset()
        let err = GDALRasterizeGeometries(ds.h, 1, &band, 1, &geometry, nil, nil, &burn, nil, nil, nil)
        guard err == CE_None else { throw RasterError.gdal("cannot rasterize the geometry") }
    }

    /// The polygons of the non-zero pixels of a byte mask laid on `transform`, merged into one
    /// multipolygon (pixel edges; GDAL's polygonizer).
    public static func polygonize(
        mask: UnsafeMutablePointer<UInt8>, width: Int, height: Int, transform: GeoTransform
    ) throws -> Geometry {
        let ds = try Dataset.wrapping(rgba: mask, width: width, height: height, bands: 1)
        var gt = transform.coefficients
        GDALSetGeoTransform(ds.h, &gt)
        guard let band = GDALGetRasterBand(ds.h, 1), let driver = OGRGetDriverByName("Memory"),
            let source = OGR_Dr_CreateDataSource(driver, "", nil)
        else { throw RasterError.gdal("cannot set up polygonizing") }
        defer { OGR_DS_Destroy(source) }
        guard let layer = OGR_DS_CreateLayer(source, "mask", nil, wkbPolygon, nil) else {
            throw RasterError.gdal("cannot set up polygonizing")
        }
        let field = OGR_Fld_Create("v", OFTInteger)
        OGR_L_CreateField(layer, field, 1)
        OGR_Fld_Destroy(field)
        CPLErrorReset()
        // The band is its own mask: zero pixels make no polygon. The band belongs to `ds`, which
        // must outlive its use: Swift may end a local's life after its last mention.
        let polygonized = withExtendedLifetime(ds) { GDALPolygonize(band, band, layer, 0, nil, nil, nil) }
        guard polygonized == CE_None else { throw RasterError.gdal("cannot polygonize the mask") }
        var parts: [Geometry] = []
        OGR_L_ResetReading(layer)
        while let f = OGR_L_GetNextFeature(layer) {
            if let g = OGR_F_GetGeometryRef(f), let c = OGR_G_Clone(g) { parts.append(Geometry(owning: c)) }
            OGR_F_Destroy(f)
        }
        return try union(parts)
    }
}

/// Features read from a vector file (GeoJSON, GeoPackage, Shapefile… anything OGR reads).
public struct VectorFeature {
    public var fields: [String: String]
    public var geometry: Geometry?
}

public enum VectorFile {
    /// Every feature of the first layer (or `layer`), with its CRS (nil when the file has none).
    public static func read(_ path: String, layer name: String? = nil) throws -> (
        crs: SpatialReference?, features: [VectorFeature]
    ) {
        GDAL.initialize()
        CPLErrorReset()
        guard let ds = GDALOpenEx(path, UInt32(GDAL_OF_VECTOR | GDAL_OF_READONLY), nil, nil, nil) else {
            throw RasterError.gdal("cannot open \(path) as a vector file")
        }
        defer { GDALClose(ds) }
        guard GDALDatasetGetLayerCount(ds) > 0,
            let layer = name.map({ GDALDatasetGetLayerByName(ds, $0) }) ?? GDALDatasetGetLayer(ds, 0)
        else { throw RasterError("\(path) has no layer\(name.map { " named \($0)" } ?? "")") }
        let crs = OGR_L_GetSpatialRef(layer).flatMap { ref -> SpatialReference? in
            var wkt: UnsafeMutablePointer<CChar>?
            OSRExportToWkt(ref, &wkt)
            defer { VSIFree(wkt) }
            return wkt.flatMap { try? SpatialReference(String(cString: $0)) }
        }
        let defn = OGR_L_GetLayerDefn(layer)
        let names = (0..<OGR_FD_GetFieldCount(defn)).map {
            String(cString: OGR_Fld_GetNameRef(OGR_FD_GetFieldDefn(defn, $0)))
        }
        var features: [VectorFeature] = []
        OGR_L_ResetReading(layer)
        while let f = OGR_L_GetNextFeature(layer) {
            var fields: [String: String] = [:]
            for (i, n) in names.enumerated() where OGR_F_IsFieldSetAndNotNull(f, Int32(i)) != 0 {
                fields[n] = String(cString: OGR_F_GetFieldAsString(f, Int32(i)))
            }
            let g = OGR_F_GetGeometryRef(f).flatMap { OGR_G_Clone($0) }.map { Geometry(owning: $0) }
            features.append(VectorFeature(fields: fields, geometry: g))
            OGR_F_Destroy(f)
        }
        return (crs, features)
    }
}

/// A geometry prepared for many `contains`/`intersects` tests (GEOS builds an index on first use).
/// Not thread-safe: guard it with a lock when shared.
public final class PreparedGeometry {
    public let geometry: Geometry
    private let handle: OGRPreparedGeometryH?

    public init(_ geometry: Geometry) {
        self.geometry = geometry
        handle = OGRHasPreparedGeometrySupport() != 0 ? OGRCreatePreparedGeometry(geometry.handle) : nil
    }

    deinit { if let handle { OGRDestroyPreparedGeometry(handle) } }

    public func contains(_ other: Geometry) -> Bool {
        guard let handle else { return geometry.contains(other) }
        return OGRPreparedGeometryContains(handle, other.handle) != 0
    }

    public func intersects(_ other: Geometry) -> Bool {
        guard let handle else { return geometry.intersects(other) }
        return OGRPreparedGeometryIntersects(handle, other.handle) != 0
    }
}
