//! Every flag of TEI 1.9's `text-embeddings-router` parses as `spotinfer serve`'s, under TEI's
//! environment variable, and passes start-up validation: a TEI Deployment's args carry over.

use clap::{CommandFactory, Parser};

use super::{Cli, Command, ServeArgs};

/// TEI's flag, its environment variable here, and a value TEI accepts (None: a switch).
const TEI_FLAGS: &[(&str, &str, Option<&str>)] = &[
    ("--model-id", "MODEL_ID", Some("BAAI/bge-small-en-v1.5")),
    ("--revision", "REVISION", Some("refs/pr/2")),
    ("--tokenization-workers", "TOKENIZATION_WORKERS", Some("2")),
    ("--dtype", "DTYPE", Some("float16")),
    ("--dtype", "DTYPE", Some("float32")),
    ("--served-model-name", "SERVED_MODEL_NAME", Some("embedder")),
    ("--pooling", "POOLING", Some("cls")),
    ("--pooling", "POOLING", Some("mean")),
    ("--pooling", "POOLING", Some("splade")),
    ("--pooling", "POOLING", Some("last-token")),
    (
        "--max-concurrent-requests",
        "MAX_CONCURRENT_REQUESTS",
        Some("512"),
    ),
    ("--max-batch-tokens", "MAX_BATCH_TOKENS", Some("16384")),
    ("--max-batch-requests", "MAX_BATCH_REQUESTS", Some("8")),
    (
        "--max-client-batch-size",
        "MAX_CLIENT_BATCH_SIZE",
        Some("32"),
    ),
    ("--auto-truncate", "AUTO_TRUNCATE", Some("false")),
    ("--auto-truncate", "AUTO_TRUNCATE", None),
    (
        "--default-prompt-name",
        "DEFAULT_PROMPT_NAME",
        Some("query"),
    ),
    ("--default-prompt", "DEFAULT_PROMPT", Some("query: ")),
    ("--dense-path", "DENSE_PATH", Some("2_Dense_1024")),
    ("--hf-api-token", "HF_API_TOKEN", Some("hf_xyz")),
    ("--hf-token", "HF_TOKEN", Some("hf_xyz")),
    // TEI's variable is HOSTNAME; here SPOTINFER_HOSTNAME, and HOSTNAME when it is an IP
    // address (what TEI binds to in that case too): see `bind_hostname`.
    ("--hostname", "SPOTINFER_HOSTNAME", Some("127.0.0.1")),
    ("--port", "PORT", Some("8080")),
    ("-p", "PORT", Some("8080")),
    (
        "--uds-path",
        "UDS_PATH",
        Some("/tmp/text-embeddings-inference-server"),
    ),
    (
        "--huggingface-hub-cache",
        "HUGGINGFACE_HUB_CACHE",
        Some("/data"),
    ),
    ("--payload-limit", "PAYLOAD_LIMIT", Some("2000000")),
    ("--api-key", "API_KEY", Some("secret")),
    ("--json-output", "JSON_OUTPUT", None),
    ("--disable-spans", "DISABLE_SPANS", None),
    ("--prometheus-port", "PROMETHEUS_PORT", Some("9000")),
    (
        "--otlp-endpoint",
        "OTLP_ENDPOINT",
        Some("http://otel-collector:4317"),
    ),
    ("--otlp-service-name", "OTLP_SERVICE_NAME", Some("embedder")),
    ("--cors-allow-origin", "CORS_ALLOW_ORIGIN", Some("*")),
    (
        "--cors-allow-origin",
        "CORS_ALLOW_ORIGIN",
        Some("https://app.example.com"),
    ),
];

fn serve(args: &[&str]) -> Result<ServeArgs, String> {
    let argv = ["spotinfer", "serve"].iter().chain(args);
    match Cli::try_parse_from(argv).map_err(|e| e.to_string())? {
        Cli {
            command: Command::Serve(a),
        } => Ok(*a),
        other => Err(format!("not serve: {other:?}")),
    }
}

#[test]
fn every_tei_flag_parses_with_teis_env_var_and_validates() {
    let cmd = Cli::command();
    let serve_cmd = cmd.find_subcommand("serve").expect("serve subcommand");
    for (flag, env, value) in TEI_FLAGS {
        let mut argv = vec![*flag];
        argv.extend(value.iter());
        let args = serve(&argv).unwrap_or_else(|e| panic!("{argv:?} must parse: {e}"));
        args.validate()
            .unwrap_or_else(|e| panic!("{argv:?} must validate: {e}"));
        let arg = serve_cmd
            .get_arguments()
            .find(|a| match flag.strip_prefix("--") {
                Some(long) => a.get_long() == Some(long),
                None => a.get_short() == flag.chars().nth(1),
            })
            .unwrap_or_else(|| panic!("no argument {flag}"));
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some(*env),
            "{flag} reads the wrong variable"
        );
    }
}

#[test]
fn tei_flag_values_land_where_they_mean_the_same() {
    let a = serve(&[
        "--auto-truncate",
        "--hf-api-token",
        "old",
        "--cors-allow-origin",
        "https://a.example",
        "--cors-allow-origin",
        "https://b.example,https://c.example",
        "-p",
        "8080",
        "--dense-path",
        "2_Dense_1024",
        "--disable-spans",
    ])
    .expect("parses");
    assert!(a.auto_truncate);
    assert_eq!(a.model.hub_token(), Some("old"));
    assert_eq!(
        a.cors_allow_origin,
        [
            "https://a.example",
            "https://b.example",
            "https://c.example"
        ]
    );
    assert_eq!(a.port, 8080);
    assert_eq!(a.model.dense_path.as_deref(), Some("2_Dense_1024"));
    assert!(a.model.disable_spans);
    let a = serve(&["--hf-token", "new"]).expect("parses");
    assert_eq!(a.model.hub_token(), Some("new"));
    // TEI refuses both at once; so do we.
    assert!(serve(&["--hf-token", "a", "--hf-api-token", "b"]).is_err());
    assert!(serve(&["--default-prompt", "a", "--default-prompt-name", "b"]).is_err());
}

#[test]
fn values_tei_would_crash_on_are_refused_with_a_message() {
    let a = serve(&["--cors-allow-origin", "not an origin"]).expect("parses");
    let err = a.validate().expect_err("refused");
    assert!(err.contains("--cors-allow-origin"), "{err}");
}
