import Foundation
import Pyramid
import Raster
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Two `dallage serve` processes on one PostgreSQL database and one store, behind nginx as the
/// load balancer, as a platform runs stateless replicas: a status change made through one gates
/// tiles on the other, each extract job is run by one replica, a replica killed mid-job leaves its
/// job to the other, and per-client limits count the jobs of both.
@Suite(.serialized)
struct ReplicaTests {
    /// A `publish: by-status` copy of the fixture's store, two replicas on one new database and
    /// one extracts folder, and nginx in front; everything stopped by `stop()`.
    final class Replicas: Sendable {
        static let token = "s3cret"
        let directory: String
        let ports: [Int]
        let processes: [ChildProcess]
        let nginx: ChildProcess

        /// The replicas' base URLs, then nginx's.
        var replica: [String] { ports.prefix(2).map { "http://127.0.0.1:\($0)" } }
        var balancer: String { "http://127.0.0.1:\(ports[2])" }

        init(extractLimits: String = "{}") async throws {
            let nginxPath = try #require(
                FileManager.default.isExecutableFile(atPath: "/usr/sbin/nginx")
                    ? "/usr/sbin/nginx" : findExecutable("nginx"),
                "nginx is not installed (make test-deps)")
            let binary = ServerFixture.root + "/.build/debug/dallage"
            try #require(FileManager.default.isExecutableFile(atPath: binary))
            directory = try ServerFixture.copy()
            let pyramid = directory + "/store/pcrs/2154_5cm"
            var manifest = try PyramidManifest.load(directory: pyramid)
            manifest.publish = .byStatus
            try manifest.save(directory: pyramid)
            let db = try await PostgresTestCluster.shared.newDatabase()
            let url =
                "postgresql://\(db.user):\(db.password ?? "")@\(db.host):\(db.port)/\(db.database ?? "")?sslmode=disable"
            ports = try freePorts(3)
            // One extracts folder for both: any replica serves any download.
            let config = """
                store: \(directory)/store
                database: "\(url)"
                tms_dir: \(ServerFixture.root)/config/tms
                admin_tokens: [\(Self.token)]
                extracts_dir: \(directory)/extracts
                extract_job_lease_seconds: 2
                extract_jobs_per_client: 2
                extract_limits: \(extractLimits)
                rescan_seconds: 0.2
                """
            try config.write(toFile: directory + "/dallage.yaml", atomically: true, encoding: .utf8)
            let (dir, replicaPorts) = (directory, ports)
            processes = try (0..<2).map { i in
                // At low priority: the test process's own servers (other suites run beside this
                // one) must not wait for the replicas' extract jobs.
                try ChildProcess(
                    "/usr/bin/nice",
                    ["-n", "10", binary, "serve", "--config", dir + "/dallage.yaml", "--port", "\(replicaPorts[i])"],
                    environment: ["DALLAGE_LOG_LEVEL": "debug"], log: dir + "/replica\(i).log")
            }
            let user = getuid() == 0 ? "user root;" : ""
            let conf = """
                \(user)
                daemon off;
                master_process off;
                pid \(directory)/nginx.pid;
                error_log \(directory)/nginx-error.log;
                events { worker_connections 256; }
                http {
                  access_log off;
                  client_body_temp_path \(directory)/nginx-body;
                  proxy_temp_path \(directory)/nginx-proxy;
                  upstream dallage { server 127.0.0.1:\(ports[0]); server 127.0.0.1:\(ports[1]); keepalive 8; }
                  server {
                    listen 127.0.0.1:\(ports[2]);
                    location / {
                      proxy_pass http://dallage;
                      proxy_http_version 1.1;
                      proxy_set_header Connection "";
                      proxy_buffering off;
                    }
                  }
                }
                """
            try conf.write(toFile: directory + "/nginx.conf", atomically: true, encoding: .utf8)
            nginx = try ChildProcess(
                nginxPath, ["-c", directory + "/nginx.conf", "-p", directory], log: directory + "/nginx.log")
            for base in replica + [balancer] {
                try await eventually("\(base) to answer /healthz") {
                    (try? await Self.curl(base + "/healthz"))?.status == 200
                }
            }
        }

        func stop() {
            for p in processes + [nginx] { p.kill() }
            try? FileManager.default.removeItem(atPath: directory)
        }

        /// How many times each replica's log says it claimed `job`.
        func claims(of job: String) throws -> [Int] {
            try (0..<2).map { i in
                let log = try String(contentsOfFile: directory + "/replica\(i).log", encoding: .utf8)
                return log.components(separatedBy: "extract \(job) claimed by").count - 1
            }
        }

        /// Status and body of a request, made with curl (a client of its own, as a user's).
        static func curl(
            _ url: String, method: String = "GET", body: String? = nil, token: Bool = false
        ) async throws -> (status: Int, body: Data) {
            let out = NSTemporaryDirectory() + "replica-\(UUID().uuidString)"
            defer { try? FileManager.default.removeItem(atPath: out) }
            var arguments = ["-s", "-o", out, "-w", "%{http_code}", "-X", method, "--max-time", "60"]
            if let body { arguments += ["-H", "Content-Type: application/json", "--data-binary", body] }
            if token { arguments += ["-H", "Authorization: Token \(Self.token)"] }
            let code = try await run("curl", arguments + [url])
            let data = (try? Data(contentsOf: URL(fileURLWithPath: out))) ?? Data()
            return (Int(code.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1, data)
        }

        static func object(_ data: Data) -> [String: Any] {
            (try? JSONSerialization.jsonObject(with: data) as? [String: Any]) ?? [:]
        }
    }

    /// The z22 row wholly inside the fixture's data, and a column of it (as PublicationTests).
    static let row = 385_939
    static let col = 55_003
    static var tilePath: String { "/tiles/pcrs/2154_5cm/22/\(col)/\(row).jpg" }

    @Test func aStatusChangeThroughOneReplicaGatesTilesOnTheOther() async throws {
        let r = try await Replicas()
        defer { r.stop() }
        let top = 12_000_000 - Double(Self.row) * 12.8
        let area = try PublicationTests.drawn(704_000 + 3 * 12.8 - 1, top - 40, 704_070, top + 20)
        let create = """
            {"nom":"B","geometrie":\(area),"etapes":[{"statut":"prod_en_cours","date_debut":"2024-01-01"}],
             "livrables":[{"nom":"ortho","tileset":"pcrs"}]}
            """
        let created = try await Replicas.curl(r.balancer + "/api/projects", method: "POST", body: create, token: true)
        #expect(created.status == 201, "\(String(decoding: created.body, as: UTF8.self))")
        let id = try #require(Replicas.object(created.body)["id"] as? Int)
        for base in r.replica { #expect(try await Replicas.curl(base + Self.tilePath).status == 404) }
        // Published through replica 0: replica 1 shows the tile, told by NOTIFY (polled here
        // with a generous deadline; bench/cluster measures the delay).
        let publish = #"{"statut":"disponible","date_debut":"2024-06-01"}"#
        let published = try await Replicas.curl(
            r.replica[0] + "/api/projects/\(id)/etapes", method: "POST", body: publish, token: true)
        #expect(published.status == 200)
        let clock = ContinuousClock()
        let start = clock.now
        try await eventually("replica 1 to serve the published tile") {
            try await Replicas.curl(r.replica[1] + Self.tilePath).status == 200
        }
        print("replica gating delay: \(clock.now - start)")
        #expect(try await Replicas.curl(r.replica[0] + Self.tilePath).status == 200)
        // Made obsolete through replica 1: replica 0 hides it again.
        let retire = #"{"statut":"obsolete","date_debut":"2025-01-01"}"#
        #expect(
            try await Replicas.curl(
                r.replica[1] + "/api/projects/\(id)/etapes", method: "POST", body: retire, token: true
            ).status == 200)
        try await eventually("replica 0 to hide the obsolete tile") {
            try await Replicas.curl(r.replica[0] + Self.tilePath).status == 404
        }
    }

    /// An extract over the fixture's data at `resolution` (always queued here: `direct_pixels` is 1).
    static func extract(_ resolution: Double) -> String {
        """
        {"tileset":"pcrs","resolution":\(resolution),"format":"gtiff","geometry":{"type":"Polygon",\
        "crs":{"type":"name","properties":{"name":"EPSG:2154"}},\
        "coordinates":[[[704003,7059953],[704047,7059953],[704047,7059997],[704003,7059997],[704003,7059953]]]}}
        """
    }

    /// Queues an extract through `base`; its id.
    static func queue(_ base: String, _ resolution: Double) async throws -> String {
        let r = try await Replicas.curl(base + "/api/extracts", method: "POST", body: extract(resolution))
        #expect(r.status == 202, "\(String(decoding: r.body, as: UTF8.self))")
        return try #require(Replicas.object(r.body)["id"] as? String)
    }

    static func state(_ base: String, _ job: String) async throws -> String {
        Replicas.object(try await Replicas.curl(base + "/api/extracts/\(job)").body)["state"] as? String ?? "?"
    }

    @Test func jobsRunOnceLimitsHoldAcrossReplicasAndAKilledReplicasJobIsTakenOver() async throws {
        let r = try await Replicas(extractLimits: "{direct_pixels: 1}")
        defer { r.stop() }
        // The tileset is published by status: a published project over the whole fixture.
        let all = try PublicationTests.drawn(703_990, 7_059_940, 704_060, 7_060_010)
        let project = """
            {"nom":"A","geometrie":\(all),"etapes":[{"statut":"disponible","date_debut":"2024-01-01"}],
             "livrables":[{"nom":"ortho","tileset":"pcrs"}]}
            """
        #expect(
            try await Replicas.curl(r.balancer + "/api/projects", method: "POST", body: project, token: true).status
                == 201)
        // Two quick jobs through the balancer: each run by exactly one replica, and its result
        // downloadable from both (one extracts folder).
        let quick = [try await Self.queue(r.balancer, 0.2), try await Self.queue(r.balancer, 0.1)]
        for job in quick {
            try await eventually("job \(job) to finish") { try await Self.state(r.balancer, job) == "done" }
            let claims = try r.claims(of: job)
            #expect(claims.reduce(0, +) == 1, "\(claims)")
            let downloads = try await r.replica.asyncMap {
                try await Replicas.curl($0 + "/api/extracts/\(job)/download")
            }
            #expect(downloads.map { $0.status } == [200, 200])
            #expect(downloads[0].body == downloads[1].body && downloads[0].body.count > 1000)
        }
        // Replica 1 paused: replica 0 claims the next job, a slow one, and is killed as soon as it
        // is seen running (nothing asked of it in between: on a loaded machine a request to it
        // took longer than the job). Then one more slow job of the same client through replica 1
        // (slow too, so that it cannot have finished when the third one is asked for).
        r.processes[1].signal(SIGSTOP)
        let slow = try await Self.queue(r.replica[0], 0.01)
        try await eventually("replica 0 to run the slow job") { try await Self.state(r.replica[0], slow) == "running" }
        r.processes[0].kill()
        r.processes[1].signal(SIGCONT)
        let second = try await Self.queue(r.replica[1], 0.01)
        // Two jobs at once per client (this address) on the whole platform: replica 1 counts the
        // one replica 0 was running when killed beside its own.
        let third = try await Replicas.curl(r.replica[1] + "/api/extracts", method: "POST", body: Self.extract(0.2))
        #expect(third.status == 429, "\(String(decoding: third.body, as: UTF8.self))")
        // Replica 1 runs the queued job and takes the slow one over once replica 0's lease (2 s)
        // has run out.
        for job in [slow, second] {
            try await eventually("job \(job) to finish on replica 1", timeout: .seconds(300)) {
                try await Self.state(r.replica[1], job) == "done"
            }
        }
        let claims = try r.claims(of: slow)
        #expect(claims == [1, 1], "claims of the slow job by replica 0 and 1: \(claims)")
        let file = r.directory + "/slow.tif"
        try (try await Replicas.curl(r.replica[1] + "/api/extracts/\(slow)/download")).body.write(
            to: URL(fileURLWithPath: file))
        let ds = try Dataset.open(file)
        #expect(ds.width == 4400 && ds.height == 4400, "\(ds.width)×\(ds.height)")
    }
}

extension Array {
    /// The results of `transform` over the elements, in order, one after the other.
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var out: [T] = []
        for e in self { out.append(try await transform(e)) }
        return out
    }
}
