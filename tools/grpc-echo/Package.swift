// swift-tools-version:6.0
// The baselines for tools/bench rpc, built apart from LiveRoom so its main build stays lean: a
// grpc-swift-2 echo server and load client (what the RPC targets compare against) and a bare
// SwiftNIO echo (the floor: sockets, kernel and wake-ups, with no protocol on top).
import PackageDescription

let package = Package(
    name: "grpc-echo",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(url: "https://github.com/grpc/grpc-swift-2.git", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport.git", from: "2.9.2"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.80.0"),
    ],
    targets: [
        .target(name: "EchoLoad"),
        .executableTarget(name: "grpc-echo", dependencies: [
            "EchoLoad",
            .product(name: "GRPCCore", package: "grpc-swift-2"),
            .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        ]),
        .executableTarget(name: "nio-echo", dependencies: [
            "EchoLoad",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
        ]),
    ],
    swiftLanguageModes: [.v6]
)
