import ArgumentParser
import Coverage
import Foundation
import Logging
import Pyramid
import S3
import Serving

/// Where the coverage database is: `--db`, else `DALLAGE_DB`, else `<store>/dallage.sqlite` (a
/// folder store only: an `s3://` store needs an explicit database, as the server does).
struct DatabaseOptions: ParsableArguments {
    @Option(
        help: """
            Coverage database: a SQLite file or postgres://user:password@host:port/db?sslmode=… \
            Default: DALLAGE_DB, else <store>/dallage.sqlite (required with an s3:// store).
            """)
    var db: String?
    @Option(
        help:
            "Store of pyramids (for tiled progress and deliverables): a folder or s3://bucket/prefix (AWS_* variables)."
    )
    var store = "store"

    /// Runs `body` with the coverage service on this database, with tiled progress read from
    /// `store` on `grid`'s pyramids (`render_grid`), and the store itself. A bucket is reached
    /// with the AWS environment, checked first (one listing), and its client closed after.
    func withService<R>(
        grid: String = defaultRenderGrid, _ body: (CoverageService, any PyramidStore) async throws -> R
    ) async throws -> R {
        let location: StoreLocation
        do { location = try StoreLocation(parsing: store) } catch { throw ValidationError(error.description) }
        var logger = Logger(label: "dallage.database")
        logger.logLevel = .error
        func open(_ text: String) async throws -> any CoverageDatabase {
            let database: DatabaseLocation
            do { database = try DatabaseLocation(parsing: text) } catch { throw ValidationError(error.message) }
            return try await database.open(logger: logger)
        }
        let explicit = db ?? ProcessInfo.processInfo.environment["DALLAGE_DB"]
        switch location {
        case .folder(let path):
            // The default database is created in the store, not in a folder made up for it: a
            // command run where there is no store says so.
            var isFolder: ObjCBool = false
            guard
                explicit != nil
                    || (FileManager.default.fileExists(atPath: path, isDirectory: &isFolder) && isFolder.boolValue)
            else {
                throw ValidationError(
                    "no store folder at '\(path)': give --store DIR (the folder of pyramids), or --db for the database alone"
                )
            }
            let service = CoverageService(
                store: try await open(explicit ?? (path as NSString).appendingPathComponent("dallage.sqlite")),
                adminTokens: [], footprints: StoreFootprints(store: path, grid: grid))
            return try await body(service, FolderStore(path))
        case .s3(let bucket, let prefix):
            guard let explicit else {
                throw ValidationError(
                    "store '\(location)': an s3:// store needs an explicit database (--db or DALLAGE_DB: a SQLite file or a postgres:// URL)"
                )
            }
            let configuration: S3Configuration
            do { configuration = try S3Configuration(environment: ProcessInfo.processInfo.environment) } catch {
                throw ValidationError("store '\(location)': \(error)")
            }
            let database = try await open(explicit)
            return try await S3Client.withClient(configuration: configuration, logger: logger) { client in
                let objects = S3Store(bucket: client.bucket(bucket), prefix: prefix, logger: logger)
                do { try await objects.check() } catch {
                    throw StartFailure(description: "store '\(location)' cannot be read: \(error)")
                }
                // Tilesets and footprints as the server reads them from a bucket: its catalog.
                let catalog = PyramidCatalog(store: objects, logger: logger)
                let service = CoverageService(
                    store: database, adminTokens: [], footprints: StoreFootprints(catalog: catalog, grid: grid))
                return try await body(service, objects)
            }
        }
    }

    /// Runs `body` with the coverage service (see `withService(grid:_:)`).
    func withService<R>(_ body: (CoverageService) async throws -> R) async throws -> R {
        try await withService { service, _ in try await body(service) }
    }
}

/// Whoever runs the command line on the server holds the database: an administrator.
private let shell = Principal.admin("cli:\(ProcessInfo.processInfo.environment["USER"] ?? "shell")")

/// Prints a JSON value, indented.
private func printJSON(_ v: JSONValue) {
    let data = try? JSONSerialization.data(
        withJSONObject: JSONSerialization.jsonObject(with: Data(v.text.utf8)),
        options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
    print(data.map { String(decoding: $0, as: UTF8.self) } ?? v.text)
}

struct TerritoriesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "territories", abstract: "Administrative boundaries that project perimeters refer to.",
        subcommands: [Import.self, List.self])

    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Import communes, EPCI or départements from GeoJSON, GeoPackage or Shapefile (any CRS).")
        @Argument(help: "Vector file.") var file: String
        @Option(help: "commune, epci or departement.") var level: Territory.Level
        @Option(name: .customLong("code-field"), help: "Field holding the code (INSEE, SIREN…).") var codeField: String
        @Option(name: .customLong("name-field"), help: "Field holding the name.") var nameField: String
        @Option(name: .customLong("departement-field"), help: "Field holding the département code, if any.")
        var departementField: String?
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            try await database.withService { service in
                let (inserted, updated, skipped) = try await service.importTerritories(
                    path: file, level: level, codeField: codeField, nameField: nameField,
                    departementField: departementField)
                print("\(level.rawValue): \(inserted) new, \(updated) updated, \(skipped.count) skipped")
                for s in skipped { print("  skipped \(s)") }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List territories matching a name or code.")
        @Option var level: Territory.Level?
        @Option(name: .short, help: "Part of a name or the start of a code.") var q: String?
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            try await database.withService { service in
                for t in try await service.store.territories(level: level, query: q, limit: 1000) {
                    print("\(t.reference)\t\(t.name)\t\(String(format: "%.3f", t.areaM2 / 1e6)) km²")
                }
            }
        }
    }
}

extension Territory.Level: ExpressibleByArgument {}
extension Statut: ExpressibleByArgument {}

struct ProjectsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "projects", abstract: "PCRS projects (tranches): statuses, perimeters, tiled progress.",
        subcommands: [List.self, Show.self, Create.self, SetStatus.self, History.self, Delete.self, RenewKey.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List projects with their current status.")
        @Option var statut: Statut?
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            try await database.withService { service in
                for p in try await service.projects(.init(statut: statut)) {
                    let s = p.statut(on: service.currentDay)
                    print(
                        "\(p.id)\t\(p.fields.nom)\t\(s?.rawValue ?? "-")\t\(String(format: "%.3f", p.areaM2 / 1e6)) km²"
                    )
                }
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "A project as JSON, with its tiled progress per linked tileset.")
        @Argument var id: Int64
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            try await database.withService { service in
                printJSON(try service.document(try await service.project(id)))
            }
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a project from a JSON file of its fields (nom, nature, regime, perimetres, etapes…).")
        @Argument(help: "JSON file ('-' for standard input).") var file: String
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            let data =
                file == "-"
                ? FileHandle.standardInput.readDataToEndOfFile() : try Data(contentsOf: URL(fileURLWithPath: file))
            let fields: ProjectFields
            do { fields = try JSONDecoder().decode(ProjectFields.self, from: data) } catch {
                throw ValidationError(StatusRules.describe(error))
            }
            try await database.withService { service in
                let (p, key) = try await service.create(fields, by: shell)
                print("created project \(p.id) '\(p.fields.nom)'; editor key (shown once): \(key)")
            }
        }
    }

    struct SetStatus: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set-status", abstract: "Add a status step (today unless --date).")
        @Argument var id: Int64
        @Argument var statut: Statut
        @Option(help: "Start date YYYY-MM-DD.") var date: String?
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            try await database.withService { service in
                let day = date ?? service.currentDay
                guard StatusRules.isDate(day) else { throw ValidationError("--date must be YYYY-MM-DD") }
                let p = try await service.addStep(id, Etape(statut: statut, dateDebut: day), by: shell)
                print(
                    "project \(p.id): \(p.statut(on: service.currentDay)?.rawValue ?? "-") (step \(statut.rawValue) from \(day))"
                )
            }
        }
    }

    struct History: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Every change made to a project.")
        @Argument var id: Int64
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            try await database.withService { service in
                for h in try await service.history(id) {
                    print("\(h.at)\t\(h.actor)\t\(h.action)\t\(h.changes.text)")
                }
            }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a project (kept in the history).")
        @Argument var id: Int64
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            try await database.withService { try await $0.delete(id, by: shell) }
            print("project \(id) deleted")
        }
    }

    struct RenewKey: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "renew-key", abstract: "Give a project a new editor key (the old one stops working).")
        @Argument var id: Int64
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            print(try await database.withService { try await $0.renewEditorKey(id, by: shell) })
        }
    }
}
