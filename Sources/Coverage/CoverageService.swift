import Crypto
import Foundation
import Raster

/// Who is asking. Readers need nothing; administrators hold a token; an editor holds the secret
/// key of one project.
public enum Principal: Sendable, Equatable {
    case reader
    /// An administrator, named without any part of a secret: the token's place (1, 2…) in the
    /// configured list, or `cli:<user>` for the command line.
    case admin(String)
    case editor(Int64)

    /// How the history names them (never the secret, nor any part of its hash).
    public var actor: String {
        switch self {
        case .reader: "reader"
        case .admin(let id): "admin:\(id)"
        case .editor(let p): "editor:project-\(p)"
        }
    }

    public var isAdmin: Bool { if case .admin = self { true } else { false } }
}

/// Projects, territories, coverage and progress: the rules above a `CoverageStore`.
public final class CoverageService: Sendable {
    public let store: any CoverageStore
    /// SHA-256 (hex) of each administrator token, with its place (1, 2…) in the configured list.
    let adminTokenHashes: [String: Int]
    /// The tilesets this server publishes, which a `disponible` project's deliverables must name,
    /// and the area each really covers (tiled progress).
    public let footprints: any TiledFootprints
    let today: @Sendable () -> String

    /// `adminTokens` are secrets or `sha256:<hex>` hashes of secrets (configuration only).
    public init(
        store: any CoverageStore, adminTokens: [String], footprints: any TiledFootprints,
        today: @escaping @Sendable () -> String = { StatusRules.today() }
    ) {
        self.store = store
        var hashes: [String: Int] = [:]
        for (i, t) in adminTokens.enumerated() where !t.isEmpty {
            let hash = Self.hashConfiguredToken(t)
            if hashes[hash] == nil { hashes[hash] = i + 1 }
        }
        adminTokenHashes = hashes
        self.footprints = footprints
        self.today = today
    }

    /// A secret as it is stored: hex SHA-256. Requests are always hashed this way, so a stored
    /// hash presented as a token is just a wrong token.
    public static func hashToken(_ token: String) -> String {
        SHA256.hash(data: Data(token.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    /// An administrator token from the configuration: a `sha256:<hex>` entry is already hashed
    /// (so the file need not hold the secret), anything else is the secret itself.
    public static func hashConfiguredToken(_ token: String) -> String {
        if token.hasPrefix("sha256:") { return String(token.dropFirst(7)).lowercased() }
        return hashToken(token)
    }

    /// A new random secret (editor keys).
    public static func newSecret() -> String {
        var g = SystemRandomNumberGenerator()
        return (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &g)) }.joined()
    }

    // MARK: - Authentication

    /// The principal for an `Authorization: Token …` header (nil header: a reader). A token that
    /// is neither an administrator's nor an editor key is refused.
    public func authenticate(authorization: String?) async throws -> Principal {
        guard let authorization, !authorization.isEmpty else { return .reader }
        let parts = authorization.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "token" || parts[0].lowercased() == "bearer" else {
            throw CoverageError(.unauthorized, "use 'Authorization: Token <secret>'")
        }
        let hash = Self.hashToken(String(parts[1]).trimmingCharacters(in: .whitespaces))
        if let n = adminTokenHashes[hash] { return .admin("\(n)") }
        if let p = try await store.project(editorKeyHash: hash) { return .editor(p) }
        throw CoverageError(.unauthorized, "unknown token")
    }

    /// True when the header carries an administrator token (no database access: tile requests).
    public func isAdmin(authorization: String?) -> Bool {
        guard let authorization else { return false }
        let parts = authorization.split(separator: " ", maxSplits: 1)
        guard parts.count == 2 else { return false }
        return adminTokenHashes[Self.hashToken(String(parts[1]).trimmingCharacters(in: .whitespaces))] != nil
    }

    private func requireAdmin(_ who: Principal) throws(CoverageError) {
        switch who {
        case .admin: return
        case .reader: throw CoverageError(.unauthorized, "this needs an administrator token")
        case .editor: throw CoverageError(.forbidden, "only an administrator may do this")
        }
    }

    private func requireEditor(_ who: Principal, of project: Int64) throws(CoverageError) {
        switch who {
        case .admin: return
        case .editor(let p) where p == project: return
        case .editor: throw CoverageError(.forbidden, "this editor key belongs to another project")
        case .reader:
            throw CoverageError(.unauthorized, "this needs an administrator token or the project's editor key")
        }
    }

    // MARK: - Territories

    /// Imports territories from any vector file OGR reads, in any CRS; re-importing updates in place.
    public func importTerritories(
        path: String, level: Territory.Level, codeField: String, nameField: String, departementField: String? = nil
    ) async throws -> (inserted: Int, updated: Int, skipped: [String]) {
        let (crs, features) = try VectorFile.read(path)
        let source = try crs ?? SpatialReference.wgs84()
        let l93 = try SpatialReference(epsg: 2154)
        let toL93 = try CoordinateTransform(from: source, to: l93)
        let toWGS84 = try CoordinateTransform(from: l93, to: SpatialReference.wgs84())
        var out: [Territory] = []
        var skipped: [String] = []
        for (i, f) in features.enumerated() {
            guard let code = f.fields[codeField], !code.isEmpty else {
                skipped.append("feature \(i): no \(codeField)")
                continue
            }
            guard var g = f.geometry, g.isAreal else {
                skipped.append("\(code): not a polygon")
                continue
            }
            g = try g.transformed(toL93)
            if !g.isValid { g = try g.makeValid() }
            let dep =
                departementField.flatMap { f.fields[$0] }
                ?? (level == .departement ? code : level == .commune ? Self.departement(ofINSEE: code) : nil)
            out.append(
                Territory(
                    level: level, code: code, name: f.fields[nameField] ?? code, departement: dep, wktL93: g.wkt,
                    geoJSONWGS84: try g.transformed(toWGS84).geoJSON(precision: 6), areaM2: g.area))
        }
        let (inserted, updated) = try await store.upsertTerritories(out)
        return (inserted, updated, skipped)
    }

    /// The département of a commune from its INSEE code (`2A`/`2B` in Corsica, 3 digits overseas).
    static func departement(ofINSEE code: String) -> String? {
        guard code.count == 5 else { return nil }
        return code.hasPrefix("97") ? String(code.prefix(3)) : String(code.prefix(2))
    }

    // MARK: - Projects

    /// Where a drawn perimeter may lie (WGS84 degrees): Lambert-93's area of use, mainland France
    /// and Corsica with their waters (EPSG:2154). Checked before any transform, so a world-wide or
    /// 1e300 polygon is refused with its reason instead of failing in the projection.
    public static let drawnArea = (minLon: -9.86, minLat: 41.15, maxLon: 10.38, maxLat: 51.56)

    /// Checks that `drawn` is a GeoJSON Polygon or MultiPolygon whose every position is a finite
    /// longitude, latitude pair inside `drawnArea`.
    static func checkDrawn(_ drawn: JSONValue) throws(CoverageError) {
        guard case .string(let type) = drawn["type"] ?? .null, type == "Polygon" || type == "MultiPolygon" else {
            throw CoverageError(.invalid, "geometrie must be a GeoJSON Polygon or MultiPolygon")
        }
        // Positions sit 3 (Polygon) or 4 (MultiPolygon) arrays deep.
        func walk(_ v: JSONValue, depth: Int, path: String) throws(CoverageError) {
            guard case .array(let items) = v else {
                throw CoverageError(.invalid, "geometrie.coordinates\(path) must be an array")
            }
            if depth > 0 {
                for (i, item) in items.enumerated() { try walk(item, depth: depth - 1, path: path + "[\(i)]") }
                return
            }
            guard items.count >= 2, case .number(let lon) = items[0], case .number(let lat) = items[1] else {
                throw CoverageError(.invalid, "geometrie.coordinates\(path) must be a [longitude, latitude] position")
            }
            let a = drawnArea
            guard lon.isFinite, lat.isFinite, lon >= a.minLon, lon <= a.maxLon, lat >= a.minLat, lat <= a.maxLat
            else {
                throw CoverageError(
                    .invalid,
                    "geometrie.coordinates\(path) [\(lon), \(lat)] is outside Lambert-93's area of use "
                        + "(longitude \(a.minLon)…\(a.maxLon), latitude \(a.minLat)…\(a.maxLat), WGS84 degrees)")
            }
        }
        try walk(drawn["coordinates"] ?? .null, depth: type == "Polygon" ? 2 : 3, path: "")
    }

    /// A drawn perimeter (WGS84 GeoJSON) in Lambert-93, checked and repaired, as WKT: the costly
    /// part of a perimeter, done before a write's transaction.
    static func drawnPerimeterWKT(_ drawn: JSONValue) throws -> String {
        try checkDrawn(drawn)
        var g: Geometry
        do {
            g = try Geometry.fromGeoJSON(drawn.text)
        } catch {
            throw CoverageError(.invalid, "geometrie is not a GeoJSON geometry")
        }
        guard g.isAreal else { throw CoverageError(.invalid, "geometrie must be a Polygon or MultiPolygon") }
        do {
            g = try g.transformed(
                CoordinateTransform(from: SpatialReference.wgs84(), to: SpatialReference(epsg: 2154)))
        } catch {
            throw CoverageError(.invalid, "geometrie cannot be projected to Lambert-93")
        }
        if !g.isValid {
            // GEOS' repair costs more than linear time in the self-intersections (a 20k-vertex
            // star takes minutes) and cannot be interrupted: only small drawings are repaired.
            guard g.pointCount <= Self.maxRepairVertices else {
                throw CoverageError(
                    .invalid,
                    "geometrie is invalid and has \(g.pointCount) vertices; only drawings of at most \(Self.maxRepairVertices) vertices are repaired here: fix it first (QGIS: Fix geometries)"
                )
            }
            let reason = g.invalidityReason ?? "invalid"
            // GEOS gives up on some (a ring whose last position does not repeat its first).
            guard let fixed = try? g.makeValid(), !fixed.isEmpty else {
                throw CoverageError(.invalid, "geometrie is invalid and cannot be repaired: \(reason)")
            }
            g = fixed
        }
        return g.wkt
    }

    /// The largest invalid drawing repaired (as for extracts: `max_repair_vertices`' default).
    public static let maxRepairVertices = 2000

    /// The perimeter (Lambert-93) of checked fields: the union of their territories and drawing.
    static func perimeter(_ fields: ProjectFields, territories: [String: Territory], drawnWKT: String?) throws
        -> Geometry
    {
        var parts = try fields.perimetres.compactMap { territories[$0] }.map { try Geometry.fromWKT($0.wktL93) }
        if let drawnWKT { parts.append(try Geometry.fromWKT(drawnWKT)) }
        return try Geometry.union(parts)
    }

    /// Checks fields against the rules. Tilesets a project already named while it was
    /// `disponible` stay allowed: one removed from the store since must not block its next status.
    func validate(_ fields: ProjectFields, territories: [String: Territory], before: ProjectFields?)
        throws(CoverageError)
    {
        let known = footprints.tilesets()
        let named = Set(before.flatMap { b in b.etapes.contains { $0.statut == .disponible } ? b.tilesets : nil } ?? [])
        try StatusRules.validate(
            fields, territoryExists: { territories[$0] != nil },
            tilesetExists: { known.contains($0) || named.contains($0) })
    }

    public func create(_ fields: ProjectFields, by who: Principal) async throws -> (Project, editorKey: String) {
        try requireAdmin(who)
        let found = try await store.territories(references: fields.perimetres)
        try validate(fields, territories: found, before: nil)
        let drawnWKT = try fields.geometrie.map(Self.drawnPerimeterWKT)
        let g = try Self.perimeter(fields, territories: found, drawnWKT: drawnWKT)
        let now = Self.timestamp()
        let key = Self.newSecret()
        let p = Project(id: 0, fields: fields, perimeterWKT: g.wkt, areaM2: g.area, createdAt: now, updatedAt: now)
        let created = try await store.insertProject(
            p, editorKeyHash: Self.hashToken(key),
            history: HistoryEntry(at: now, actor: who.actor, action: "create", changes: try Self.diff(nil, fields)))
        return (created, key)
    }

    public func project(_ id: Int64) async throws -> Project {
        guard let p = try await store.project(id: id) else { throw CoverageError(.notFound, "no project \(id)") }
        return p
    }

    /// Reads, changes and writes a project in one store transaction. `next` derives the new fields
    /// from the stored ones; `drawn` is the request's own drawing, already projected (nil when the
    /// request draws nothing). Nothing changed: nothing written, no history entry.
    private func modify(
        _ id: Int64, by who: Principal, action: String, drawn: (geometrie: JSONValue, wkt: String)?,
        next: @escaping @Sendable (ProjectFields) throws -> ProjectFields
    ) async throws -> Project {
        try requireEditor(who, of: id)
        return try await store.modifyProject(id: id) { [self] current, lookup in
            let fields = try next(current.fields)
            let changes = try Self.diff(current.fields, fields)
            guard case .object(let changed) = changes, !changed.isEmpty else { return nil }
            let territories = try lookup(fields.perimetres)
            try validate(fields, territories: territories, before: current.fields)
            var p = current
            // A step or a renaming keeps the stored perimeter: only its sources change it.
            if fields.perimetres != current.fields.perimetres || fields.geometrie != current.fields.geometrie {
                let wkt = try fields.geometrie.map { g in
                    if let drawn, drawn.geometrie == g { return drawn.wkt }
                    return try Self.drawnPerimeterWKT(g)
                }
                let g = try Self.perimeter(fields, territories: territories, drawnWKT: wkt)
                p.perimeterWKT = g.wkt
                p.areaM2 = g.area
            }
            let now = Self.timestamp()
            p.fields = fields
            p.updatedAt = now
            return (p, HistoryEntry(at: now, actor: who.actor, action: action, changes: changes))
        }
    }

    /// Replaces a project's fields.
    @discardableResult
    public func update(_ id: Int64, _ fields: ProjectFields, by who: Principal, action: String = "update")
        async throws -> Project
    {
        try requireEditor(who, of: id)
        let drawn = try fields.geometrie.map { ($0, try Self.drawnPerimeterWKT($0)) }
        return try await modify(id, by: who, action: action, drawn: drawn) { _ in fields }
    }

    /// Changes only the fields present in `patch` (a JSON object of project fields). A field
    /// that is not a project field is refused, so a misspelt one is not silently dropped.
    public func patch(_ id: Int64, _ patch: [String: JSONValue], by who: Principal) async throws -> Project {
        try requireEditor(who, of: id)
        let unknown = patch.keys.filter { !ProjectFields.fieldNames.contains($0) }.sorted()
        guard unknown.isEmpty else {
            throw CoverageError(
                .malformed,
                "unknown field\(unknown.count == 1 ? "" : "s") \(unknown.map { "'\($0)'" }.joined(separator: ", ")): "
                    + "a project has \(ProjectFields.fieldNames.sorted().joined(separator: ", "))")
        }
        let drawn = try patch["geometrie"].flatMap { g in g == .null ? nil : (g, try Self.drawnPerimeterWKT(g)) }
        return try await modify(id, by: who, action: "update", drawn: drawn) { stored in
            guard case .object(var merged) = try JSONValue.parse(try stored.jsonText()) else {
                throw CoverageError(.malformed, "cannot read the project")
            }
            for (k, v) in patch { merged[k] = v }
            do {
                return try JSONDecoder().decode(ProjectFields.self, from: Data(JSONValue.object(merged).text.utf8))
            } catch {
                throw CoverageError(.malformed, StatusRules.describe(error))
            }
        }
    }

    /// Adds a status step (the web page's and the CLI's `set-status`) to the steps as stored at
    /// the moment of the write.
    public func addStep(_ id: Int64, _ step: Etape, by who: Principal) async throws -> Project {
        try await modify(id, by: who, action: "status", drawn: nil) { stored in
            var fields = stored
            fields.etapes.append(step)
            return fields
        }
    }

    public func delete(_ id: Int64, by who: Principal) async throws {
        try requireAdmin(who)
        let now = Self.timestamp()
        try await store.deleteProject(
            id: id, at: now, history: HistoryEntry(at: now, actor: who.actor, action: "delete", changes: .object([:])))
    }

    /// A new editor key for a project (the old one stops working); shown once.
    public func renewEditorKey(_ id: Int64, by who: Principal) async throws -> String {
        try requireAdmin(who)
        let key = Self.newSecret()
        try await store.setEditorKeyHash(
            project: id, hash: Self.hashToken(key),
            history: HistoryEntry(
                at: Self.timestamp(), actor: who.actor, action: "renew-editor-key", changes: .object([:])))
        return key
    }

    public func history(_ id: Int64) async throws -> [HistoryEntry] {
        _ = try await project(id)
        return try await store.history(project: id)
    }

    public var currentDay: String { today() }

    // MARK: - Helpers

    /// An ISO 8601 UTC instant with milliseconds (history, jobs); sorts as text.
    public static func timestamp(_ date: Date = Date()) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.string(from: date)
    }

    /// `{field: {"from": old, "to": new}}` for each top-level field that changed.
    static func diff(_ old: ProjectFields?, _ new: ProjectFields) throws -> JSONValue {
        let before = try old.map { try JSONValue.parse($0.jsonText()) } ?? .object([:])
        let after = try JSONValue.parse(new.jsonText())
        guard case .object(let a) = after else { return .object([:]) }
        var out: [String: JSONValue] = [:]
        for (k, v) in a where before[k] != v {
            out[k] = .object(["from": before[k] ?? .null, "to": v])
        }
        return .object(out)
    }

    // MARK: - Tiled progress

    /// Fraction of the perimeter present in each linked tileset, and what is missing (Lambert-93).
    public func progress(_ p: Project) throws -> [(tileset: String, fraction: Double?, missing: Geometry?)] {
        let perimeter = try Geometry.fromWKT(p.perimeterWKT)
        return try p.fields.tilesets.map { t in
            guard let footprint = try footprints.footprint(of: t), p.areaM2 > 0 else { return (t, nil, nil) }
            let present = try perimeter.intersection(footprint).area
            let missing = try perimeter.difference(footprint)
            return (t, min(1, present / p.areaM2), missing)
        }
    }

    /// The union (Lambert-93) of the perimeters of projects currently `disponible` whose
    /// deliverables are published in `tileset`.
    public func publishedPerimeter(tileset: String) async throws -> Geometry {
        let day = today()
        let parts = try await store.projects()
            .filter { $0.statut(on: day) == .disponible && $0.fields.tilesets.contains(tileset) }
            .map { try Geometry.fromWKT($0.perimeterWKT) }
        return try Geometry.union(parts)
    }
}
