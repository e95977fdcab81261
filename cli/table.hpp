// Fixed-width text tables that print row by row, so long runs show results as they come.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace moba::cli {

class Table {
 public:
  struct Column {
    std::string title;
    int width;
    bool left = false;  // text columns; numbers align right
  };
  explicit Table(std::vector<Column> columns) : columns_(std::move(columns)) {}

  std::string header() const {
    std::vector<std::string> titles;
    for (const auto& c : columns_) titles.push_back(c.title);
    return row(titles) + "\n" + rule();
  }

  std::string rule() const {
    std::string s;
    for (std::size_t i = 0; i < columns_.size(); ++i)
      s += (i ? "  " : "") + std::string(std::size_t(columns_[i].width), '-');
    return s;
  }

  std::string row(const std::vector<std::string>& cells) const {
    std::string s;
    for (std::size_t i = 0; i < columns_.size(); ++i) {
      const std::string cell = i < cells.size() ? cells[i] : "";
      const int w = columns_[i].width;
      if (i) s += "  ";
      s += columns_[i].left ? fmt::format("{:<{}}", cell, w) : fmt::format("{:>{}}", cell, w);
    }
    while (!s.empty() && s.back() == ' ') s.pop_back();
    return s;
  }

 private:
  std::vector<Column> columns_;
};

}  // namespace moba::cli
