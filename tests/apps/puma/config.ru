# The puma app of the matrix (docs/apps.md): a Rack app.
#
# GET / answers "release VERSION pid PID"; GET /slow?ms=N answers the same
# after N ms. The release comes from APP_RELEASE, which the release's puma
# config file sets.
release = ENV.fetch("APP_RELEASE", "unknown")

run(lambda do |env|
  pid = Process.pid
  case env["PATH_INFO"]
  when "/"
    [200, { "content-type" => "text/plain" }, ["release #{release} pid #{pid}\n"]]
  when "/slow"
    ms = (env["QUERY_STRING"].to_s[/(?:\A|&)ms=(\d+)/, 1] || "1000").to_i
    sleep([ms, 600_000].min / 1000.0)
    [200, { "content-type" => "text/plain" }, ["release #{release} pid #{pid} slept #{ms} ms\n"]]
  else
    [404, { "content-type" => "text/plain" }, ["not found\n"]]
  end
end)
