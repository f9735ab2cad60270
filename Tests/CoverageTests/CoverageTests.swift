import Foundation
import GeoGrid
import Logging
import Raster
import TestSupport
import Testing

@testable import Coverage

/// A square in Lambert-93 as a GeoJSON Feature with properties.
private func square(_ code: String, _ name: String, x: Double, y: Double, side: Double) -> String {
    """
    {"type":"Feature","properties":{"insee":"\(code)","nom":"\(name)"},"geometry":{"type":"Polygon","coordinates":[[[\(x),\(y)],[\(x + side),\(y)],[\(x + side),\(y + side)],[\(x),\(y + side)],[\(x),\(y)]]]}}
    """
}

/// The two stores every store-level test runs against.
enum StoreKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite, postgres

    var testDescription: String { rawValue }
}

/// A fresh, empty database of one kind — a SQLite file in a new folder, or a new database on the
/// tests' PostgreSQL cluster — that several stores may open, as several processes would.
struct TestDatabase: Sendable {
    var kind: StoreKind
    var location: DatabaseLocation
    /// A new folder for the test's files (the SQLite file is in it).
    var dir: String

    static func make(_ kind: StoreKind) async throws -> TestDatabase {
        let dir = NSTemporaryDirectory() + "dallage-coverage-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        switch kind {
        case .sqlite: return TestDatabase(kind: kind, location: .sqlite(path: dir + "/db.sqlite"), dir: dir)
        case .postgres:
            return TestDatabase(
                kind: kind, location: .postgres(try await PostgresTestCluster.shared.newDatabase()), dir: dir)
        }
    }

    /// A store on this database (migrated at open), as one more process would open it.
    func open() async throws -> any CoverageDatabase {
        var logger = Logger(label: "dallage.tests.database")
        logger.logLevel = .warning
        return try await location.open(logger: logger)
    }
}

/// A coverage service on a fresh database with three communes of département 59 (each 1 km²,
/// the last two adjacent) and one of 62, imported from a Lambert-93 GeoJSON file. The server has
/// the tileset `pcrs`, tiled over `footprints` (nothing by default).
func makeService(
    _ kind: StoreKind = .sqlite, today: String = "2025-06-01", footprints: [String: Geometry] = [:]
) async throws -> (CoverageService, String) {
    let (service, database) = try await makeServiceAndDatabase(kind, today: today, footprints: footprints)
    return (service, database.dir)
}

/// `makeService`, and the database it is on (for a second store on it).
func makeServiceAndDatabase(
    _ kind: StoreKind, today: String = "2025-06-01", footprints: [String: Geometry] = [:]
) async throws -> (CoverageService, TestDatabase) {
    let database = try await TestDatabase.make(kind)
    let dir = database.dir
    let features = [
        square("59350", "Lille", x: 704_000, y: 7_058_000, side: 1000),
        square("59009", "Villeneuve-d'Ascq", x: 710_000, y: 7_058_000, side: 1000),
        square("59512", "Roubaix", x: 711_000, y: 7_058_000, side: 1000),
        square("62041", "Arras", x: 684_000, y: 7_020_000, side: 1000),
    ]
    let file = dir + "/communes.geojson"
    try """
    {"type":"FeatureCollection","crs":{"type":"name","properties":{"name":"urn:ogc:def:crs:EPSG::2154"}},"features":[\(features.joined(separator: ","))]}
    """.write(toFile: file, atomically: true, encoding: .utf8)
    let service = CoverageService(
        store: try await database.open(), adminTokens: ["admin-secret"],
        footprints: FixedFootprints(known: ["pcrs"], areas: footprints), today: { today })
    let (inserted, updated, skipped) = try await service.importTerritories(
        path: file, level: .commune, codeField: "insee", nameField: "nom")
    #expect(inserted == 4 && updated == 0 && skipped.isEmpty)
    return (service, database)
}

let admin = Principal.admin("test")

@Suite struct StatusRuleTests {
    static let steps = [
        Etape(statut: .investigation, dateDebut: "2024-01-10"),
        Etape(statut: .prodEnCours, dateDebut: "2024-09-01"),
        Etape(statut: .disponible, dateDebut: "2025-03-15"),
    ]

    @Test(arguments: [
        ("2023-12-31", nil), ("2024-01-10", Statut.investigation), ("2024-08-31", .investigation),
        ("2024-09-01", .prodEnCours), ("2025-03-14", .prodEnCours), ("2025-03-15", .disponible),
        ("2030-01-01", .disponible),
    ])
    func currentStatusIsTheLatestStartedStep(day: String, expected: Statut?) {
        #expect(StatusRules.current(Self.steps, on: day) == expected)
    }

    @Test func statusesAreInPCRSOrderWithFrenchLabels() {
        #expect(
            Statut.allCases.map(\.rawValue) == [
                "investigation", "convention_signee", "marche_public_en_cours", "prod_en_cours",
                "controle_en_cours", "realise", "disponible", "obsolete",
            ])
        #expect(Statut.disponible.label == "Publié")
        #expect(Statut.investigation < .obsolete)
    }

    @Test(arguments: [
        (
            "{\"nom\":\"a\",\"perimetres\":[\"commune:59350\"],\"etapes\":[{\"statut\":\"fini\",\"date_debut\":\"2024-01-01\"}]}",
            "unknown status"
        ),
        ("{\"nom\":\"a\",\"nature\":\"photo\",\"perimetres\":[\"commune:59350\"]}", "nature must be one of"),
        ("{\"perimetres\":[\"commune:59350\"]}", "missing field nom"),
    ])
    func malformedFieldsAreExplained(json: String, message: String) {
        do {
            _ = try JSONDecoder().decode(ProjectFields.self, from: Data(json.utf8))
            Issue.record("decoded \(json)")
        } catch {
            #expect(StatusRules.describe(error).contains(message), "\(StatusRules.describe(error))")
        }
    }

    @Test func rulesRefuseWhatPCRSForbids() {
        let known: (String) -> Bool = { $0 == "commune:59350" }
        func check(_ f: ProjectFields) -> String? {
            do {
                try StatusRules.validate(f, territoryExists: known)
                return nil
            } catch { return error.message }
        }
        let ok = ProjectFields(nom: "Lille", perimetres: ["commune:59350"], etapes: Self.steps.dropLast().map { $0 })
        #expect(check(ok) == nil)
        var backwards = ok
        backwards.etapes = [Self.steps[1], Self.steps[0]]
        #expect(check(backwards)?.contains("must not go backwards") == true)
        var unknown = ok
        unknown.perimetres = ["commune:99999"]
        #expect(check(unknown)?.contains("unknown territory 'commune:99999'") == true)
        var badDate = ok
        badDate.etapes = [Etape(statut: .investigation, dateDebut: "2024-02-30")]
        #expect(check(badDate)?.contains("is not a date") == true)
        var published = ok
        published.etapes = Self.steps
        #expect(check(published)?.contains("without a deliverable") == true)
        published.livrables = [Livrable(nom: "Ortho 5 cm", tileset: "pcrs")]
        #expect(check(published) == nil)
        // A deliverable in a tileset this server does not have publishes nothing.
        published.livrables = [Livrable(nom: "Ortho 5 cm", tileset: "nope")]
        do {
            try StatusRules.validate(published, territoryExists: known, tilesetExists: { $0 == "pcrs" })
            Issue.record("accepted a 'disponible' project publishing in an unknown tileset")
        } catch {
            #expect(error.message.contains("livrables[0].tileset 'nope' is not a tileset of this server"))
        }
        var nowhere = ok
        nowhere.perimetres = []
        #expect(check(nowhere)?.contains("needs a perimeter") == true)
    }
}

extension Livrable {
    init(nom: String, tileset: String?) {
        self.init(nom: nom, format: nil, licence: nil, dateLivraison: nil, tileset: tileset, diffusion: nil)
    }
}

@Suite(.blocking) struct ProjectStoreTests {
    @Test(arguments: StoreKind.allCases)
    func tiledProgressIsThePartOfThePerimeterInsideTheFootprint(store: StoreKind) async throws {
        // The western 400 m of Lille (1 km²) are tiled in pcrs.
        let tiled = Geometry.rectangle(BoundingBox(minX: 704_000, minY: 7_058_000, maxX: 704_400, maxY: 7_059_000))
        let (service, _) = try await makeService(store, footprints: ["pcrs": tiled])
        let livrables = [Livrable(nom: "ortho", tileset: "pcrs"), Livrable(nom: "ailleurs", tileset: "other")]
        let (p, _) = try await service.create(
            ProjectFields(nom: "Lille", perimetres: ["commune:59350"], livrables: livrables), by: admin)
        let progress = try service.progress(p)
        #expect(progress.map(\.tileset) == ["pcrs", "other"])
        #expect(abs((progress[0].fraction ?? 0) - 0.4) < 1e-9)
        #expect(abs((progress[0].missing?.area ?? 0) - 600_000) < 1)
        // Nothing tiled in a tileset: no progress to show, rather than 0 %.
        #expect(progress[1].fraction == nil && progress[1].missing == nil)
    }

    @Test(arguments: StoreKind.allCases)
    func perimeterAreaIsTheUnionOfTerritoriesAndDrawing(store: StoreKind) async throws {
        let (service, _) = try await makeService(store)
        // Two adjacent 1 km² communes: 2 km².
        let (p, key) = try await service.create(
            ProjectFields(nom: "Métropole", perimetres: ["commune:59009", "commune:59512"]), by: admin)
        #expect(abs(p.areaM2 - 2_000_000) / 2_000_000 < 0.001)
        #expect(key.count == 64)
        // A drawn square (WGS84) half over Lille adds 0.5 km².
        let toWGS84 = try CoordinateTransform(from: SpatialReference(epsg: 2154), to: SpatialReference.wgs84())
        let drawn = try Geometry.fromWKT(
            "POLYGON ((704500 7058000, 705500 7058000, 705500 7059000, 704500 7059000, 704500 7058000))"
        ).transformed(toWGS84)
        var fields = ProjectFields(nom: "Lille élargie", perimetres: ["commune:59350"])
        fields.geometrie = try JSONValue.parse(drawn.geoJSON(precision: 10))
        let (q, _) = try await service.create(fields, by: admin)
        #expect(abs(q.areaM2 - 1_500_000) / 1_500_000 < 0.001)
    }

    /// GeoPackage in WGS84 and Shapefile in CC49 (made with ogr2ogr from the same communes):
    /// re-importing updates in place, and areas survive the reprojections within 0.1 %.
    @Test(arguments: [("GPKG", "gpkg", "EPSG:4326"), ("ESRI Shapefile", "shp", "EPSG:3949")], StoreKind.allCases)
    func importReadsOtherFormatsAndCRSs(format: (driver: String, ext: String, crs: String), store: StoreKind)
        async throws
    {
        let (driver, ext, crs) = format
        let (service, dir) = try await makeService(store)
        let out = dir + "/communes-\(ext).\(ext)"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/ogr2ogr")
        p.arguments = ["-f", driver, "-t_srs", crs, out, dir + "/communes.geojson"]
        try p.run()
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        let (inserted, updated, skipped) = try await service.importTerritories(
            path: out, level: .commune, codeField: "insee", nameField: "nom")
        #expect(inserted == 0 && updated == 4 && skipped.isEmpty)
        let lille = try #require(try await service.store.territories(references: ["commune:59350"])["commune:59350"])
        #expect(abs(lille.areaM2 - 1_000_000) / 1_000_000 < 0.001)
        #expect(lille.departement == "59")
        let found = try await service.store.territories(level: .commune, query: "roub", limit: 10)
        #expect(found.map(\.code) == ["59512"])
    }

    @Test(arguments: StoreKind.allCases)
    func historyRecordsWhoChangedWhatAndDeletesAreSoft(store: StoreKind) async throws {
        let (service, _) = try await makeService(store)
        let (p, key) = try await service.create(
            ProjectFields(
                nom: "Lille", perimetres: ["commune:59350"],
                etapes: [Etape(statut: .investigation, dateDebut: "2024-01-10")]),
            by: admin)
        let editor = try await service.authenticate(authorization: "Token \(key)")
        #expect(editor == .editor(p.id))
        _ = try await service.addStep(p.id, Etape(statut: .prodEnCours, dateDebut: "2025-02-01"), by: editor)
        _ = try await service.patch(p.id, ["regime": .string("maj")], by: admin)
        try await service.delete(p.id, by: admin)
        await #expect(throws: CoverageError.self) { _ = try await service.project(p.id) }
        let history = try await service.store.history(project: p.id)
        #expect(history.map(\.action) == ["create", "status", "update", "delete"])
        #expect(history[1].actor == "editor:project-\(p.id)")
        #expect(history[2].actor == "admin:test")
        #expect(history[1].changes["etapes"]?["to"] != nil)
        #expect(history[2].changes["regime"] == .object(["from": .string("production"), "to": .string("maj")]))
        // The name of a deleted project is free again.
        _ = try await service.create(ProjectFields(nom: "Lille", perimetres: ["commune:59350"]), by: admin)
        await #expect(throws: CoverageError(.conflict, "a project named 'Lille' already exists")) {
            _ = try await service.create(ProjectFields(nom: "Lille", perimetres: ["commune:59350"]), by: admin)
        }
    }

    /// Reader, editor of this project, editor of another, administrator × each write.
    @Test(arguments: StoreKind.allCases)
    func authorisationMatrix(store: StoreKind) async throws {
        let (service, _) = try await makeService(store)
        let (p, keyP) = try await service.create(ProjectFields(nom: "P", perimetres: ["commune:59350"]), by: admin)
        let (_, keyQ) = try await service.create(ProjectFields(nom: "Q", perimetres: ["commune:62041"]), by: admin)
        let who: [(String, String?)] = [
            ("reader", nil), ("editor of P", "Token \(keyP)"), ("editor of Q", "Token \(keyQ)"),
            ("admin", "Token admin-secret"),
        ]
        // Expected outcome per write: nil = allowed, else the refusal.
        let expected: [String: [String: CoverageError.Kind?]] = [
            "reader": [
                "create": .unauthorized, "update": .unauthorized, "step": .unauthorized, "delete": .unauthorized,
                "key": .unauthorized,
            ],
            "editor of P": ["create": .forbidden, "update": nil, "step": nil, "delete": .forbidden, "key": .forbidden],
            "editor of Q": [
                "create": .forbidden, "update": .forbidden, "step": .forbidden, "delete": .forbidden, "key": .forbidden,
            ],
            "admin": ["create": nil, "update": nil, "step": nil, "delete": nil, "key": nil],
        ]
        for (name, header) in who {
            let principal = try await service.authenticate(authorization: header)
            let writes: [(String, () async throws -> Void)] = [
                (
                    "create",
                    {
                        _ = try await service.create(
                            ProjectFields(nom: "new \(name)", perimetres: ["commune:59009"]), by: principal)
                    }
                ),
                ("update", { _ = try await service.patch(p.id, ["nature": .string("mixte")], by: principal) }),
                (
                    "step",
                    {
                        _ = try await service.addStep(
                            p.id, Etape(statut: .realise, dateDebut: "2025-05-01"), by: principal)
                    }
                ),
                ("key", { _ = try await service.renewEditorKey(p.id, by: principal) }),
            ]
            for (write, run) in writes {
                let before = try await service.store.history(project: p.id).count
                var outcome: CoverageError.Kind? = nil
                do { try await run() } catch let e as CoverageError { outcome = e.kind }
                #expect(outcome == expected[name]![write]!, "\(name) \(write)")
                if outcome != nil, write != "create" {
                    #expect(
                        try await service.store.history(project: p.id).count == before,
                        "\(name) \(write) changed nothing")
                }
            }
        }
        // A wrong token is refused outright; the old editor key stopped working after renewal.
        await #expect(throws: CoverageError.self) { _ = try await service.authenticate(authorization: "Token nope") }
        await #expect(throws: CoverageError.self) { _ = try await service.authenticate(authorization: "Token \(keyP)") }
        // Delete last (it would hide the project from the other writes).
        for (name, header) in who {
            let principal = try await service.authenticate(authorization: header == "Token \(keyP)" ? nil : header)
            var outcome: CoverageError.Kind? = nil
            do { try await service.delete(p.id, by: principal) } catch let e as CoverageError { outcome = e.kind }
            if name == "admin" {
                #expect(outcome == nil)
            } else if name == "reader" {
                #expect(outcome == .unauthorized)
            }
        }
    }

    @Test(arguments: StoreKind.allCases)
    func statsCountAreasPerStatusAndDepartement(store: StoreKind) async throws {
        let (service, _) = try await makeService(store)
        let pub = [Livrable(nom: "ortho", tileset: "pcrs")]
        _ = try await service.create(
            ProjectFields(
                nom: "A", perimetres: ["commune:59350", "commune:59009"],
                etapes: [Etape(statut: .disponible, dateDebut: "2025-01-01")], livrables: pub), by: admin)
        // Overlapping Villeneuve-d'Ascq again: counted once in the union of 'disponible'.
        _ = try await service.create(
            ProjectFields(
                nom: "B", perimetres: ["commune:59009"],
                etapes: [Etape(statut: .disponible, dateDebut: "2025-02-01")], livrables: pub), by: admin)
        _ = try await service.create(
            ProjectFields(
                nom: "C", perimetres: ["commune:62041"], etapes: [Etape(statut: .prodEnCours, dateDebut: "2025-01-01")]),
            by: admin)
        // A future step does not count yet.
        _ = try await service.create(
            ProjectFields(
                nom: "D", perimetres: ["commune:59512"], etapes: [Etape(statut: .realise, dateDebut: "2026-01-01")]),
            by: admin)
        let stats = try await service.stats()
        #expect(stats["territoire_km2"] == .number(4))
        #expect(stats["statuts"]?["disponible"]?["km2"] == .number(2))
        #expect(stats["statuts"]?["disponible"]?["part"] == .number(0.5))
        #expect(stats["statuts"]?["prod_en_cours"]?["km2"] == .number(1))
        #expect(stats["statuts"]?["realise"]?["km2"] == .number(0))
        guard case .array(let deps) = stats["departements"] ?? .null else {
            Issue.record("no départements")
            return
        }
        let d59 = deps.first { $0["code"] == .string("59") }
        #expect(d59?["territoire_km2"] == .number(3))
        #expect(d59?["statuts"]?["disponible"]?["part"] == .number(0.666667))
        // CSV: one line per project, quoted where needed.
        let csv = try await service.projectsCSV()
        #expect(csv.split(separator: "\r\n").count == 5)
        #expect(csv.contains("commune:59350 commune:59009"))
        let geo = try await service.coverageGeoJSON(.init(statut: .disponible))
        #expect(geo.components(separatedBy: "\"type\":\"Feature\"").count - 1 == 2)
        #expect(geo.contains("\"statut_libelle\":\"Publié\""))
    }
}
