import Foundation
import Logging

/// A coverage database: projects, territories and their history, and the extract queue, in one
/// place. SQLite (the embedded default) or PostgreSQL (several servers on one database).
public protocol CoverageDatabase: CoverageStore, ExtractJobStore {
    /// Releases connections (a PostgreSQL pool); the store answers no query afterwards.
    func close() async
    /// The revision now, then each time it changes, whichever process wrote: what a server
    /// watches to reload published perimeters. Polled every `interval` by default (SQLite);
    /// PostgreSQL listens for `NOTIFY` instead.
    func revisions(polling interval: Duration) -> AsyncStream<Int64>
}

/// Where the coverage database is, as `DALLAGE_DB` or the configuration's `database:` say it:
/// a SQLite file path, or a `postgres://` / `postgresql://` URL in libpq's spelling.
public enum DatabaseLocation: Sendable, Equatable, CustomStringConvertible {
    /// A SQLite file, created when absent (the embedded default).
    case sqlite(path: String)
    /// A PostgreSQL database shared by several servers.
    case postgres(PostgresLocation)

    /// Reads a path or URL. A path is a SQLite file; `postgres://` and `postgresql://` are
    /// PostgreSQL; any other `scheme://` is refused (a typo must not become a file of that name).
    public init(parsing text: String) throws(CoverageError) {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard let schemeEnd = trimmed.range(of: "://") else {
            guard !trimmed.isEmpty else { throw CoverageError(.malformed, "the database location is empty") }
            self = .sqlite(path: trimmed)
            return
        }
        let scheme = trimmed[..<schemeEnd.lowerBound].lowercased()
        switch scheme {
        case "postgres", "postgresql": self = .postgres(try PostgresLocation(parsing: trimmed))
        case "sqlite", "file":
            throw CoverageError(
                .malformed, "a SQLite database is given as a plain path, not a \(scheme):// URL")
        default:
            throw CoverageError(
                .malformed,
                "the database '\(scheme)://…' is neither a SQLite file path nor a postgres:// or postgresql:// URL")
        }
    }

    /// The location without any password: safe to log.
    public var description: String {
        switch self {
        case .sqlite(let path): path
        case .postgres(let location): location.description
        }
    }
}

/// A PostgreSQL server and database, from a libpq-style URL
/// (`postgres://user:password@host:port/db?sslmode=…`). The password is kept for connecting and
/// appears in no description, debug description or mirror.
public struct PostgresLocation: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible,
    CustomReflectable
{
    /// libpq's `sslmode` values. `allow` is treated as `prefer` (postgres-nio tries TLS first).
    public enum SSLMode: String, Sendable, CaseIterable {
        /// Plain TCP.
        case disable
        /// TLS when the server offers it, certificate unchecked (as `prefer`).
        case allow
        /// TLS when the server offers it, certificate unchecked: libpq's default.
        case prefer
        /// TLS or no connection, certificate unchecked.
        case require
        /// TLS with a certificate signed by a trusted CA, whatever name it bears.
        case verifyCA = "verify-ca"
        /// TLS with a trusted certificate for the host named in the URL.
        case verifyFull = "verify-full"
    }

    /// PostgreSQL's port, when the URL names none.
    public static let defaultPort = 5432

    /// The server's name or address (an IPv6 address without its brackets).
    public var host: String
    /// The server's TCP port.
    public var port: Int
    /// The role to log in as.
    public var user: String
    /// Nil when the URL has none (trust or peer authentication).
    public var password: String?
    /// Nil when the URL names none: the server then uses the user's name.
    public var database: String?
    /// libpq's default is `prefer`.
    public var sslMode: SSLMode
    /// A CA bundle (PEM) to verify the server against (`sslrootcert`), for `verify-ca` and
    /// `verify-full`; the system's roots otherwise.
    public var sslRootCertificate: String?

    /// A location from its parts (the URL's, decoded).
    public init(
        host: String, port: Int = Self.defaultPort, user: String, password: String?, database: String?,
        sslMode: SSLMode = .prefer, sslRootCertificate: String? = nil
    ) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
        self.sslMode = sslMode
        self.sslRootCertificate = sslRootCertificate
    }

    /// Reads `postgres://` or `postgresql://user[:password]@host[:port][/database][?sslmode=…]`
    /// (percent-encoded parts decoded). Errors never quote the URL: it may hold the password.
    public init(parsing text: String) throws(CoverageError) {
        guard let url = URLComponents(string: text), let scheme = url.scheme?.lowercased(),
            scheme == "postgres" || scheme == "postgresql"
        else {
            throw CoverageError(.malformed, "the PostgreSQL URL is malformed (postgres://user:password@host:port/db)")
        }
        guard var host = url.host, !host.isEmpty else {
            throw CoverageError(.malformed, "the PostgreSQL URL names no host (postgres://user:password@host:port/db)")
        }
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard let user = url.user, !user.isEmpty else {
            throw CoverageError(.malformed, "the PostgreSQL URL names no user (postgres://user:password@host:port/db)")
        }
        if let port = url.port, !(1...65535).contains(port) {
            throw CoverageError(.malformed, "the PostgreSQL port \(port) is out of range")
        }
        var path = url.percentEncodedPath
        if path.hasPrefix("/") { path.removeFirst() }
        guard !path.contains("/") else {
            throw CoverageError(.malformed, "the PostgreSQL URL's path must be one database name")
        }
        let database = path.isEmpty ? nil : (path.removingPercentEncoding ?? path)
        var sslMode = SSLMode.prefer
        var rootCertificate: String?
        for item in url.queryItems ?? [] {
            switch item.name {
            case "sslmode":
                guard let mode = item.value.flatMap(SSLMode.init(rawValue:)) else {
                    throw CoverageError(
                        .malformed,
                        "sslmode '\(item.value ?? "")' is not one of \(SSLMode.allCases.map(\.rawValue).joined(separator: ", "))"
                    )
                }
                sslMode = mode
            case "sslrootcert": rootCertificate = item.value
            default:
                throw CoverageError(
                    .malformed, "the PostgreSQL URL parameter '\(item.name)' is not supported (sslmode, sslrootcert)")
            }
        }
        self.init(
            host: host, port: url.port ?? Self.defaultPort, user: user, password: url.password, database: database,
            sslMode: sslMode, sslRootCertificate: rootCertificate)
    }

    /// `postgres://user@host:port/db?sslmode=…`, the password left out.
    public var description: String {
        let shownHost = host.contains(":") ? "[\(host)]" : host
        return "postgres://\(user)@\(shownHost):\(port)/\(database ?? user)?sslmode=\(sslMode.rawValue)"
    }

    public var debugDescription: String { description }

    public var customMirror: Mirror {
        Mirror(
            self,
            children: [
                "host": host, "port": port, "user": user, "database": database as Any,
                "sslMode": sslMode.rawValue, "password": password == nil ? "none" : "(hidden)",
            ])
    }
}

extension DatabaseLocation {
    /// Opens the database this location names, migrating it: SQLite at once, PostgreSQL after
    /// connecting (a bad password or an unreachable server is a `.unavailable` error naming the
    /// server without the password).
    public func open(logger: Logger) async throws -> any CoverageDatabase {
        switch self {
        case .sqlite(let path): try SQLiteCoverageStore(path: path)
        case .postgres(let location): try await PostgresCoverageStore(location, logger: logger)
        }
    }
}
